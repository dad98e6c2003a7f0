// The 3D viewer: the server renders every picture; this page sends gestures over a
// WebSocket and draws the frames it receives. Mouse: drag rotates (or windows, or pans,
// by the chosen tool), the wheel zooms, right-drag pans. Touch: one finger rotates,
// two fingers pinch to zoom and move together to pan.
(function () {
  "use strict";
  const root = document.getElementById("volume");
  if (!root) return;
  const canvas = document.getElementById("v3d-canvas");
  const stage = document.getElementById("v3d-stage");
  const status = document.getElementById("v3d-status");
  const ctx = canvas.getContext("2d");
  const state = {
    ready: null, // the server's "ready" message: presets, views, extent
    mode: "rotate",
    frames: 0,
    interactiveFrames: 0,
    interactiveBytes: 0,
    bytes: 0,
    lastHeader: null,
    frameTimes: [],
    closed: false,
    errors: [],
    snapshots: [],
  };
  const api = { state, send, sendNow, listeners: [] };
  window.pacsVolume = api;

  // The socket ---------------------------------------------------------------

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}${root.dataset.socket}`);
  socket.binaryType = "arraybuffer";
  api.socket = socket;

  function sendNow(message) {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  // Gestures are merged per animation frame: a fast mouse sends at most one message a frame.
  let pending = null;
  function send(message) {
    if (message.type === "rotate" || message.type === "pan") {
      if (pending && pending.type === message.type) {
        pending.dx += message.dx;
        pending.dy += message.dy;
        return;
      }
    } else if (message.type === "zoom" && pending && pending.type === "zoom") {
      pending.factor *= message.factor;
      return;
    } else if (message.type === "window" && pending && pending.type === "window") {
      pending.shift += message.shift;
      pending.scale *= message.scale;
      return;
    }
    flush();
    pending = message;
    requestAnimationFrame(flush);
  }
  function flush() {
    if (pending) sendNow(pending);
    pending = null;
  }

  socket.addEventListener("message", async (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.type === "ready") onReady(message);
      else if (message.type === "error") {
        state.errors.push(message);
        status.textContent = message.status === 404 ? "Not found" : `Error: ${message.detail}`;
      } else if (message.type === "closed") status.textContent = message.detail;
      else if (message.type === "snapshot") {
        state.snapshots.push(message);
        status.textContent = "Snapshot saved as a key image";
      }
      api.listeners.forEach((fn) => fn(message));
      return;
    }
    const view = new DataView(event.data);
    const length = view.getUint32(0);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(event.data, 4, length)));
    const blob = new Blob([new Uint8Array(event.data, 4 + length)], { type: header.media });
    sendNow({ type: "ack", frame: header.frame });
    const bitmap = await createImageBitmap(blob);
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    state.frames += 1;
    if (header.quality === "interactive") {
      state.interactiveFrames += 1;
      state.interactiveBytes += event.data.byteLength;
    }
    state.bytes += event.data.byteLength;
    state.lastHeader = header;
    state.frameTimes.push(performance.now());
    if (state.frameTimes.length > 60) state.frameTimes.shift();
    showStatus();
    canvas.dataset.frame = String(header.frame);
    canvas.dataset.quality = header.quality;
  });
  socket.addEventListener("close", (event) => {
    state.closed = true;
    if (event.code === 4404) status.textContent = "Not found";
    else if (event.code !== 1000) status.textContent = "Disconnected — reload to reopen 3D";
  });

  function showStatus() {
    const t = state.frameTimes;
    const fps = t.length > 1 ? ((t.length - 1) * 1000) / (t[t.length - 1] - t[0]) : 0;
    const h = state.lastHeader;
    status.textContent = `${h.width}×${h.height} ${h.quality} · ${h.ms} ms · ${fps.toFixed(0)} fps`;
  }

  // Controls -----------------------------------------------------------------

  function onReady(message) {
    state.ready = message;
    root.dataset.session = "open";
    const presetSelect = document.getElementById("v3d-preset");
    presetSelect.innerHTML = "";
    message.presets.forEach((name) => presetSelect.add(new Option(name.replace("_", " "), name)));
    presetSelect.value = message.parameters.transfer.name;
    const viewSelect = document.getElementById("v3d-view");
    viewSelect.innerHTML = "";
    message.views.forEach((name) => viewSelect.add(new Option(name, name)));
    // A resize before the socket opened sent nothing: always tell the server the size now.
    state.sized = false;
    resize();
  }

  document.getElementById("v3d-preset").addEventListener("change", (e) => {
    sendNow({ type: "preset", name: e.target.value });
    document.getElementById("v3d-shade").checked = true;
  });
  document.getElementById("v3d-snapshot").addEventListener("click", () => sendNow({ type: "snapshot" }));
  document.getElementById("v3d-view").addEventListener("change", (e) => sendNow({ type: "view", name: e.target.value }));
  document.getElementById("v3d-shade").addEventListener("change", (e) =>
    sendNow({ type: "transfer", changes: { shade: e.target.checked } }),
  );
  function clipping() {
    const value = (id) => Number(document.getElementById(id).value) / 100;
    const box = [];
    for (const axis of ["x", "y", "z"]) {
      let lo = value(`v3d-clip-${axis}0`);
      let hi = value(`v3d-clip-${axis}1`);
      if (hi <= lo) hi = Math.min(1, lo + 0.01);
      if (hi <= lo) lo = hi - 0.01;
      box.push(lo, hi);
    }
    return { box, table_cut: document.getElementById("v3d-table").checked };
  }
  api.clipping = clipping;
  document.querySelectorAll(".v3d-clip input, #v3d-table").forEach((input) =>
    input.addEventListener("change", () => sendNow({ type: "clip", clipping: clipping() })),
  );
  document.querySelectorAll(".v3d-modes button").forEach((button) =>
    button.addEventListener("click", () => {
      state.mode = button.dataset.mode;
      document.querySelectorAll(".v3d-modes button").forEach((b) =>
        b.setAttribute("aria-pressed", String(b === button)),
      );
    }),
  );

  function resize() {
    const ratio = Math.min(window.devicePixelRatio || 1, 2);
    const rect = stage.getBoundingClientRect();
    const width = Math.max(64, Math.min(1024, Math.round(rect.width * ratio)));
    const height = Math.max(64, Math.min(1024, Math.round(rect.height * ratio)));
    if (canvas.width === width && canvas.height === height && state.sized) return;
    canvas.width = width;
    canvas.height = height;
    state.sized = true;
    sendNow({ type: "size", width, height, dragging: false });
  }
  window.addEventListener("resize", resize);

  // Pointer gestures -----------------------------------------------------------

  const pointers = new Map();
  let pinch = null;

  function centroid() {
    const points = [...pointers.values()];
    return {
      x: points.reduce((s, p) => s + p.x, 0) / points.length,
      y: points.reduce((s, p) => s + p.y, 0) / points.length,
      spread: points.length > 1 ? Math.hypot(points[0].x - points[1].x, points[0].y - points[1].y) : 0,
    };
  }

  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, { x: e.clientX, y: e.clientY, button: e.button, shift: e.shiftKey, moved: 0 });
    pinch = pointers.size >= 2 ? centroid() : null;
    if (pinch) pointers.forEach((p) => (p.moved += 100));
    e.preventDefault();
  });
  canvas.addEventListener("pointermove", (e) => {
    const previous = pointers.get(e.pointerId);
    if (!previous) return;
    const now = { ...previous, x: e.clientX, y: e.clientY };
    if (pointers.size >= 2) {
      now.moved += 100; // part of a pinch: never a click
      pointers.set(e.pointerId, now);
      const c = centroid();
      if (pinch && pinch.spread > 0 && c.spread > 0) {
        const height = stage.getBoundingClientRect().height;
        send({ type: "zoom", factor: c.spread / pinch.spread });
        send({ type: "pan", dx: (c.x - pinch.x) / height, dy: (c.y - pinch.y) / height });
      }
      pinch = c;
      return;
    }
    const dx = now.x - previous.x;
    const dy = now.y - previous.y;
    now.moved += Math.abs(dx) + Math.abs(dy);
    pointers.set(e.pointerId, now);
    if (!dx && !dy) return;
    const height = stage.getBoundingClientRect().height;
    const mode = previous.button === 2 || previous.shift ? "pan" : state.mode;
    if (mode === "pan") send({ type: "pan", dx: dx / height, dy: dy / height });
    else if (mode === "window") send({ type: "window", shift: -dy * 2, scale: Math.exp(dx / 200) });
    else send({ type: "rotate", dx, dy });
  });
  function release(e) {
    const pointer = pointers.get(e.pointerId);
    if (!pointers.delete(e.pointerId)) return;
    if (pointers.size === 0 && pointer.moved < 4 && pointer.button === 0 && e.type === "pointerup") {
      // A click, not a drag: the point under it becomes the 3D cursor.
      const rect = canvas.getBoundingClientRect();
      sendNow({ type: "pick", x: (e.clientX - rect.left) / rect.width, y: (e.clientY - rect.top) / rect.height });
      return;
    }
    pinch = pointers.size >= 2 ? centroid() : null;
    if (pointers.size === 0) {
      flush();
      sendNow({ type: "release" });
    }
  }
  canvas.addEventListener("pointerup", release);
  canvas.addEventListener("pointercancel", release);
  canvas.addEventListener(
    "wheel",
    (e) => {
      e.preventDefault();
      send({ type: "zoom", factor: Math.exp(-e.deltaY / 500) });
      clearTimeout(state.wheelTimer);
      state.wheelTimer = setTimeout(() => {
        flush();
        sendNow({ type: "release" });
      }, 150);
    },
    { passive: false },
  );
  window.addEventListener("pagehide", () => socket.close(1000));
})();
