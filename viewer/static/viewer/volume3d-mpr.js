// Oblique and curved MPR, the 3D cursor and measurements beside the 3D view. The server
// reformats (GET …/volume/oblique/, …/curved/) and measures (POST …/measurements/);
// every point is in mm of the volume frame, so a click in one view centres the others.
(function () {
  "use strict";
  const root = document.getElementById("volume");
  if (!root || !window.pacsVolume) return;
  const volume = window.pacsVolume;
  const api = root.dataset.api;
  const csrf = root.dataset.csrf;
  const mpr = {
    centre: null,
    tool: "cursor",
    pending: [], // points of a measurement being clicked
    path: [],
    line: null,
    measurements: [],
    views: {}, // plane → {img, right, down, pixel, width, height, centre}
    loads: 0,
    active: "axial", // the reformat last clicked: the one "Save reformat" saves
    snapshots: [],
  };
  volume.mpr = mpr;
  const $ = (id) => document.getElementById(id);

  function slab() {
    const [mm, mode] = $("v3d-slab").value.split(":");
    return { mm: Number(mm), mode };
  }

  function vector(text) {
    return text.split(",").map(Number);
  }

  function load(plane) {
    const figure = document.querySelector(`.v3d-mpr[data-plane=${plane}]`);
    const img = figure.querySelector("img");
    const ratio = Math.min(window.devicePixelRatio || 1, 2);
    const size = Math.max(64, Math.min(512, Math.round(img.getBoundingClientRect().width * ratio)));
    const extent = volume.state.ready.extent_mm;
    const pixel = Math.hypot(...extent) / size;
    const { mm, mode } = slab();
    const query = new URLSearchParams({
      plane,
      spin: $("v3d-spin").value,
      tilt: $("v3d-tilt").value,
      centre: mpr.centre.map((v) => v.toFixed(2)).join(","),
      width: size,
      height: size,
      pixel: pixel.toFixed(4),
      slab: mm,
      mode,
    });
    mpr.loads += 1;
    return fetch(`${api}/oblique/?${query}`, { credentials: "same-origin" }).then(async (response) => {
      if (!response.ok) return;
      const view = {
        img,
        right: vector(response.headers.get("X-Plane-Right")),
        down: vector(response.headers.get("X-Plane-Down")),
        pixel,
        width: size,
        height: size,
        centre: mpr.centre.slice(),
        query: Object.fromEntries(query),
      };
      const url = URL.createObjectURL(await response.blob());
      if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
      img.src = url;
      mpr.views[plane] = view;
      figure.dataset.centre = view.centre.map((v) => v.toFixed(1)).join(",");
    });
  }

  function loadAll() {
    return Promise.all(["axial", "coronal", "sagittal"].map(load));
  }
  mpr.reload = loadAll;

  function pointAt(plane, event) {
    const view = mpr.views[plane];
    const rect = view.img.getBoundingClientRect();
    const column = ((event.clientX - rect.left) / rect.width) * view.width;
    const row = ((event.clientY - rect.top) / rect.height) * view.height;
    return [0, 1, 2].map(
      (k) =>
        view.centre[k] +
        (column - view.width / 2) * view.pixel * view.right[k] +
        (row - view.height / 2) * view.pixel * view.down[k],
    );
  }
  mpr.pointAt = pointAt;

  function post(body) {
    return fetch(`${api}/measurements/`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
      body: JSON.stringify(body),
    }).then((r) => r.json().then((data) => ({ ok: r.ok, data })));
  }

  function show(text) {
    const li = document.createElement("li");
    li.textContent = text;
    $("v3d-measurements").append(li);
  }

  async function measure(point) {
    mpr.pending.push(point);
    const tool = mpr.tool;
    const needed = { distance: 2, angle: 3, region: 1 }[tool];
    if (mpr.pending.length < needed) return;
    const points = mpr.pending;
    mpr.pending = [];
    const body = { kind: tool, points };
    if (tool === "region") Object.assign(body, { low: Number($("v3d-low").value), high: Number($("v3d-high").value) });
    const { ok, data } = await post(body);
    mpr.measurements.push(data);
    if (!ok) show(`${tool}: ${data.detail}`);
    else if (tool === "distance") show(`Distance ${data.distance_mm.toFixed(1)} mm`);
    else if (tool === "angle") show(`Angle ${data.angle_degrees.toFixed(1)}°`);
    else show(`Region ${(data.volume_mm3 / 1000).toFixed(2)} cm³ (${data.voxels} voxels)`);
  }

  function centreOn(point) {
    mpr.centre = point;
    volume.sendNow({ type: "centre", point });
    return loadAll();
  }
  mpr.centreOn = centreOn;

  document.querySelectorAll(".v3d-mpr").forEach((figure) => {
    figure.querySelector("img").addEventListener("click", (event) => {
      const plane = figure.dataset.plane;
      if (!mpr.views[plane]) return;
      mpr.active = plane;
      const point = pointAt(plane, event);
      if (mpr.tool === "cursor") centreOn(point);
      else if (mpr.tool === "path") {
        mpr.path.push(point);
        $("v3d-path-count").textContent = `${mpr.path.length} points`;
      } else measure(point);
    });
  });

  document.querySelectorAll(".v3d-tools button").forEach((button) =>
    button.addEventListener("click", () => {
      mpr.tool = button.dataset.tool;
      mpr.pending = [];
      document.querySelectorAll(".v3d-tools button").forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
      if (mpr.tool === "path") $("v3d-curved").hidden = false;
    }),
  );
  ["v3d-spin", "v3d-tilt", "v3d-slab"].forEach((id) => $(id).addEventListener("change", loadAll));

  // Curved MPR: the clicked path straightened, and a cross-section where the straightened view is clicked.
  function pathQuery(extra) {
    return new URLSearchParams({
      path: mpr.path.map((p) => p.map((v) => v.toFixed(2)).join(",")).join(";"),
      span: 30,
      pixel: 0.5,
      ...extra,
    });
  }
  $("v3d-straighten").addEventListener("click", async () => {
    if (mpr.path.length < 2) return;
    const response = await fetch(`${api}/curved/?${pathQuery({})}`, { credentials: "same-origin" });
    if (!response.ok) return show(`Path: ${(await response.json()).detail}`);
    mpr.line = { length: Number(response.headers.get("X-Path-Length-Mm")) };
    $("v3d-straight").src = URL.createObjectURL(await response.blob());
    $("v3d-curved").dataset.length = mpr.line.length.toFixed(1);
  });
  $("v3d-straight").addEventListener("click", async (event) => {
    if (!mpr.line) return;
    const rect = event.target.getBoundingClientRect();
    const at = ((event.clientY - rect.top) / rect.height) * mpr.line.length;
    const response = await fetch(`${api}/curved/?${pathQuery({ span: 20, at: at.toFixed(1) })}`, { credentials: "same-origin" });
    if (!response.ok) return;
    $("v3d-section").src = URL.createObjectURL(await response.blob());
    $("v3d-section-caption").textContent = `Cross-section at ${at.toFixed(0)} mm`;
    $("v3d-curved").dataset.section = at.toFixed(1);
  });
  $("v3d-path-clear").addEventListener("click", () => {
    mpr.path = [];
    mpr.line = null;
    $("v3d-path-count").textContent = "0 points";
  });

  $("v3d-mpr-snapshot").addEventListener("click", async () => {
    const view = mpr.views[mpr.active];
    if (!view) return;
    const response = await fetch(`${api}/snapshots/`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
      body: JSON.stringify({ kind: "oblique", parameters: view.query, note: `${mpr.active} reformat` }),
    });
    const data = await response.json();
    if (response.ok) {
      mpr.snapshots.push(data);
      show(`Saved ${mpr.active} reformat as a key image`);
    } else show(`Snapshot: ${data.detail}`);
  });

  volume.listeners.push((message) => {
    if (message.type === "ready" && !mpr.centre) {
      mpr.centre = message.extent_mm.map((v) => v / 2);
      loadAll();
    } else if (message.type === "cursor") {
      mpr.centre = message.point;
      loadAll();
    }
  });
})();
