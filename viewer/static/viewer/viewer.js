// Cloud PACS viewer: every pixel is rendered on the server (DICOMweb rendered
// frames, MPR images); this script only chooses which image to show, where,
// and with which window. No framework, no inline code (CSP).
(() => {
  "use strict";

  const root = document.getElementById("viewer");
  if (!root) return;

  const PREFETCH_CONCURRENCY = 3;
  const NEIGHBOURS = 8; // frames either side fetched one by one ahead of the series stream
  const STREAM_DELAY_MS = 250;
  const WINDOW_RENDER_DELAY_MS = 60; // debounce of server re-renders while dragging W/L
  const WHEEL_NOTCH = 40; // a pixel wheel delta at least this large is a mouse-wheel notch: one image
  const WHEEL_STEP = 50; // smaller (touchpad) pixel deltas add up to one image per this many

  const state = {
    manifest: null,
    series: null,
    tool: "window",
    window: null, // {center, width} or null for the image's own default
    mpr: false,
    slab: { mm: 0, mode: "mip" },
    cine: null,
    viewports: [],
    keyImages: [],
    overlay: { map: null, planes: new Map(), pending: new Set(), shown: null },
  };
  const stats = { draws: [] };
  window.pacsViewer = { state, stats };

  const $ = (selector, el = document) => el.querySelector(selector);
  const csrf = root.dataset.csrf;

  // Small helpers --------------------------------------------------------------

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, (_, key) => encodeURIComponent(values[key]));
  }

  function windowQuery() {
    if (!state.window) return "";
    return `window=${state.window.center.toFixed(1)},${state.window.width.toFixed(1)},linear`;
  }

  // One notch of a mouse wheel moves one image, however far the browser says it
  // scrolls (100 or 120 px, 300 px, 3 lines, a page). A touchpad sends a stream of
  // small pixel deltas instead, which add up to one image per WHEEL_STEP pixels.
  function wheelStepper() {
    let pending = 0;
    return (event) => {
      const direction = Math.sign(event.deltaY);
      if (!direction) return 0;
      if (event.deltaMode !== WheelEvent.DOM_DELTA_PIXEL || Math.abs(event.deltaY) >= WHEEL_NOTCH) {
        pending = 0;
        return direction;
      }
      if (Math.sign(pending) !== direction) pending = 0; // turning back starts afresh
      pending += event.deltaY;
      if (Math.abs(pending) < WHEEL_STEP) return 0;
      pending -= direction * WHEEL_STEP;
      return direction;
    };
  }

  function clamp(value, lo, hi) {
    return Math.max(lo, Math.min(hi, value));
  }

  async function api(url, options = {}) {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRFToken": csrf },
      ...options,
    });
    if (!response.ok) throw new Error(`${response.status} ${url}`);
    return response.status === 204 ? null : response.json();
  }

  function defaultWindow(series) {
    if (series.windows && series.windows.length) return { ...series.windows[0] };
    const range = series.value_range;
    if (range) return { center: (range[0] + range[1]) / 2, width: Math.max(1, range[1] - range[0]) };
    return { center: 128, width: 256 };
  }

  // Image sources: what a viewport scrolls through --------------------------------

  class StackSource {
    constructor(series) {
      this.series = series;
      this.kind = "stack";
      this.frames = [];
      series.instances.forEach((instance) => {
        for (let frame = 1; frame <= instance.frames; frame += 1) this.frames.push({ instance, frame });
      });
    }
    get count() { return this.frames.length; }
    url(index, extra) {
      const { instance, frame } = this.frames[index];
      const base = fill(state.manifest.urls.rendered, {
        study: state.manifest.study_instance_uid, series: this.series.uid, sop: instance.sop, frame,
      });
      const query = [windowQuery(), extra].filter(Boolean).join("&");
      return query ? `${base}?${query}` : base;
    }
    grid(index) {
      const { instance } = this.frames[index];
      const spacing = instance.pixel_spacing;
      return {
        rows: instance.rows, columns: instance.columns,
        rowSpacing: spacing ? spacing[0] : null, columnSpacing: spacing ? spacing[1] : null,
        spacingKind: instance.spacing_kind,
      };
    }
    label(index) {
      const { instance, frame } = this.frames[index];
      const frames = instance.frames > 1 ? ` fr ${frame}/${instance.frames}` : "";
      return `Im ${index + 1}/${this.count}${instance.number != null ? ` (#${instance.number})` : ""}${frames}`;
    }
    key(index) {
      const { instance, frame } = this.frames[index];
      return `${instance.id}:${frame}`;
    }
    indexOf(instanceId, frame) {
      return this.frames.findIndex((f) => f.instance.id === instanceId && f.frame === frame);
    }
    indexOfSop(sop, frame) {
      if (!this.bySop) {
        this.bySop = new Map(this.frames.map((f, i) => [`${f.instance.sop}/${f.frame}`, i]));
      }
      const index = this.bySop.get(`${sop}/${frame}`);
      return index == null ? -1 : index;
    }
    seriesUrl(extra) {
      const base = `/dicomweb/studies/${encodeURIComponent(state.manifest.study_instance_uid)}` +
        `/series/${encodeURIComponent(this.series.uid)}/rendered`;
      const query = [windowQuery(), extra].filter(Boolean).join("&");
      return query ? `${base}?${query}` : base;
    }
  }

  class MprSource {
    constructor(series, plane) {
      this.series = series;
      this.plane = plane;
      this.kind = "mpr";
      this.info = series.mpr[plane];
    }
    get count() { return this.info.count; }
    url(index, extra) {
      const base = fill(state.manifest.urls.mpr, { series: this.series.id, plane: this.plane, index });
      const slab = state.slab.mm ? `slab=${state.slab.mm}&mode=${state.slab.mode}` : "";
      const query = [windowQuery(), slab, extra].filter(Boolean).join("&");
      return query ? `${base}?${query}` : base;
    }
    grid() {
      return {
        rows: this.info.rows, columns: this.info.columns,
        rowSpacing: this.info.row_spacing, columnSpacing: this.info.column_spacing, spacingKind: "patient",
      };
    }
    label(index) {
      const slab = state.slab.mm ? ` ${state.slab.mode.toUpperCase()} ${state.slab.mm} mm` : "";
      return `${this.plane} ${index + 1}/${this.count}${slab}`;
    }
    key(index) { return `${this.plane}:${index}`; }
  }

  // A viewport: a canvas showing one image of a source --------------------------------

  class Viewport {
    constructor(element, source) {
      this.el = element;
      this.canvas = $("canvas.image", element);
      this.annotations = $("canvas.annotations", element);
      this.ctx = this.canvas.getContext("2d");
      this.actx = this.annotations.getContext("2d");
      this.progress = $(".progress", element);
      this.zoom = 1;
      this.pan = { x: 0, y: 0 };
      this.images = new Map();
      this.inflight = new Map();
      this.measurements = new Map();
      this.drawn = null;
      this.queue = [];
      this.active = 0;
      this.generation = 0;
      this.setSource(source);
      this.resize();
      this.bindPointer();
    }

    setSource(source, index) {
      this.source = source;
      this.index = index != null ? index : Math.floor(source.count / 2);
      this.resetImages();
      this.el.dataset.count = String(source.count);
      this.el.dataset.plane = source.kind === "mpr" ? source.plane : "stack";
    }

    resetImages() {
      this.generation += 1;
      if (this.streaming) this.streaming.abort();
      this.streaming = null;
      clearTimeout(this.streamTimer);
      for (const image of this.images.values()) {
        if (image.src.startsWith("blob:")) URL.revokeObjectURL(image.src);
      }
      this.images = new Map();
      this.inflight = new Map();
      this.queue = [];
      this.loaded = 0;
      this.el.dataset.loaded = "0";
    }

    resize() {
      const rect = this.el.getBoundingClientRect();
      const ratio = window.devicePixelRatio || 1;
      for (const canvas of [this.canvas, this.annotations]) {
        canvas.width = Math.max(1, Math.round(rect.width * ratio));
        canvas.height = Math.max(1, Math.round(rect.height * ratio));
      }
      this.draw();
    }

    sizeHint() {
      // Ask the server for a smaller image only when the screen cannot show the full one.
      const grid = this.source.grid(this.index);
      const longest = Math.max(this.canvas.width, this.canvas.height);
      if (!grid.columns || Math.max(grid.rows, grid.columns) <= longest * 1.5) return "";
      const side = Math.ceil(longest / 128) * 128;
      return `viewport=${side},${side}`;
    }

    url(index) {
      return this.source.url(index, this.sizeHint());
    }

    load(index) {
      const url = this.url(index);
      if (this.images.has(url)) return Promise.resolve(this.images.get(url));
      if (this.inflight.has(url)) return this.inflight.get(url);
      const image = new Image();
      image.decoding = "async";
      image.src = url;
      return this.track(url, image);
    }

    // Keeps ``image`` (for ``url``) once decoded, unless the window changed meanwhile.
    track(url, image) {
      const generation = this.generation;
      const promise = image.decode().then(() => {
        this.inflight.delete(url);
        if (generation !== this.generation) return image;
        this.images.set(url, image);
        this.loaded += 1;
        this.el.dataset.loaded = String(this.loaded);
        this.showProgress();
        return image;
      }, (error) => {
        this.inflight.delete(url);
        throw error;
      });
      this.inflight.set(url, promise);
      return promise;
    }

    show(index) {
      this.index = clamp(index, 0, this.source.count - 1);
      this.el.dataset.index = String(this.index);
      const url = this.url(this.index);
      const ready = this.images.get(url);
      if (ready) {
        this.drawn = { image: ready, index: this.index };
        this.draw();
      } else {
        const wanted = this.index;
        this.load(wanted).then((image) => {
          if (this.index === wanted) {
            this.drawn = { image, index: wanted };
            this.draw();
          }
        }, () => this.setStatus("This image could not be rendered."));
        this.updateOverlay();
      }
      this.prefetch();
      updateKeyButton();
    }

    step(delta) {
      this.show(this.index + delta);
    }

    prefetch() {
      const count = this.source.count;
      if (this.loaded >= count) return;
      if (this.source.kind === "stack" && !this.streaming) {
        // Once the reader stops changing the window, the whole series streams in one response.
        clearTimeout(this.streamTimer);
        this.streamTimer = setTimeout(() => this.stream(), STREAM_DELAY_MS);
      }
      const reach = this.source.kind === "mpr" ? 4 : NEIGHBOURS;
      const order = [];
      for (let d = 1; d <= reach && (this.index - d >= 0 || this.index + d < count); d += 1) {
        if (this.index + d < count) order.push(this.index + d);
        if (this.index - d >= 0) order.push(this.index - d);
      }
      this.queue = order.filter((i) => !this.images.has(this.url(i)));
      this.pump();
    }

    pump() {
      while (this.active < PREFETCH_CONCURRENCY && this.queue.length) {
        const index = this.queue.shift();
        if (this.images.has(this.url(index)) || this.inflight.has(this.url(index))) continue;
        this.active += 1;
        this.load(index).catch(() => {}).finally(() => {
          this.active -= 1;
          this.pump();
        });
      }
      this.showProgress();
    }

    // The series as one multipart/related response (PS3.18 8.7.3.3.2), parsed as it arrives.
    async stream() {
      if (this.streaming || this.source.kind !== "stack" || this.loaded >= this.source.count) return;
      const generation = this.generation;
      const controller = new AbortController();
      this.streaming = controller;
      try {
        const response = await fetch(this.source.seriesUrl(this.sizeHint()), {
          credentials: "same-origin",
          headers: { Accept: 'multipart/related; type="image/jpeg"' },
          signal: controller.signal,
        });
        const match = /boundary="?([^";]+)"?/.exec(response.headers.get("Content-Type") || "");
        if (!response.ok || !match) throw new Error(`series stream: ${response.status}`);
        await readMultipart(response.body.getReader(), match[1], (headers, body) => {
          if (generation !== this.generation) return;
          const where = /\/instances\/([^/]+)\/frames\/(\d+)\//.exec(headers["content-location"] || "");
          if (!where) return;
          const index = this.source.indexOfSop(decodeURIComponent(where[1]), Number(where[2]));
          if (index < 0) return;
          const url = this.url(index);
          if (this.images.has(url) || this.inflight.has(url)) return;
          const image = new Image();
          image.src = URL.createObjectURL(new Blob([body], { type: headers["content-type"] || "image/jpeg" }));
          this.track(url, image).then(() => {
            if (this.index === index && (!this.drawn || this.drawn.index !== index)) this.show(index);
          }, () => {});
        });
      } catch (error) {
        if (error.name !== "AbortError") this.pump();
      } finally {
        if (this.streaming === controller) this.streaming = null;
      }
    }

    showProgress() {
      if (!this.progress) return;
      const total = this.source.kind === "mpr" ? 1 : this.source.count;
      const done = this.source.kind === "mpr" ? (this.drawn ? 1 : 0) : Math.min(this.loaded, total);
      const bar = $("progress", this.progress);
      bar.max = total;
      bar.value = done;
      $(".progress-text", this.progress).textContent = `Loading ${done}/${total}`;
      this.progress.hidden = done >= total;
    }

    setStatus(text) {
      $(".progress-text", this.progress).textContent = text;
      this.progress.hidden = false;
    }

    // Geometry: canvas pixels ↔ image pixels ↔ source grid.
    layout() {
      const image = this.drawn && this.drawn.image;
      if (!image) return null;
      const fit = Math.min(this.canvas.width / image.naturalWidth, this.canvas.height / image.naturalHeight);
      const scale = fit * this.zoom;
      const ratio = window.devicePixelRatio || 1;
      const x = (this.canvas.width - image.naturalWidth * scale) / 2 + this.pan.x * ratio;
      const y = (this.canvas.height - image.naturalHeight * scale) / 2 + this.pan.y * ratio;
      return { image, scale, x, y, ratio };
    }

    toSource(clientX, clientY) {
      const l = this.layout();
      if (!l) return null;
      const rect = this.canvas.getBoundingClientRect();
      const cx = (clientX - rect.left) * l.ratio;
      const cy = (clientY - rect.top) * l.ratio;
      const grid = this.source.grid(this.drawn.index);
      return {
        x: ((cx - l.x) / l.scale) * (grid.columns / l.image.naturalWidth),
        y: ((cy - l.y) / l.scale) * (grid.rows / l.image.naturalHeight),
      };
    }

    toCanvas(point) {
      const l = this.layout();
      const grid = this.source.grid(this.drawn.index);
      return {
        x: l.x + point.x * (l.image.naturalWidth / grid.columns) * l.scale,
        y: l.y + point.y * (l.image.naturalHeight / grid.rows) * l.scale,
      };
    }

    draw() {
      const l = this.layout();
      this.ctx.setTransform(1, 0, 0, 1, 0, 0);
      this.ctx.fillStyle = "#000";
      this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      if (l) {
        this.ctx.imageSmoothingEnabled = this.zoom < 3;
        this.ctx.drawImage(l.image, l.x, l.y, l.image.naturalWidth * l.scale, l.image.naturalHeight * l.scale);
        stats.draws.push(performance.now());
        if (stats.draws.length > 2000) stats.draws.splice(0, 1000);
        this.el.dataset.shown = String(this.drawn.index);
        drawParametricMap(this, l);
      }
      this.drawAnnotations();
      this.updateOverlay();
    }

    drawAnnotations() {
      const a = this.actx;
      a.setTransform(1, 0, 0, 1, 0, 0);
      a.clearRect(0, 0, this.annotations.width, this.annotations.height);
      if (!this.drawn) return;
      const lines = this.measurements.get(this.source.key(this.drawn.index)) || [];
      const ratio = window.devicePixelRatio || 1;
      a.lineWidth = 2 * ratio;
      a.font = `${13 * ratio}px system-ui, sans-serif`;
      for (const line of [...lines, this.pending].filter(Boolean)) {
        const p = this.toCanvas(line.start);
        const q = this.toCanvas(line.end);
        a.strokeStyle = "#ffd400";
        a.fillStyle = "#ffd400";
        a.beginPath();
        a.moveTo(p.x, p.y);
        a.lineTo(q.x, q.y);
        a.stroke();
        a.fillText(formatLength(this.length(line)), q.x + 6 * ratio, q.y - 6 * ratio);
      }
    }

    length(line) {
      const grid = this.source.grid(line.index != null ? line.index : this.drawn.index);
      const dx = line.end.x - line.start.x;
      const dy = line.end.y - line.start.y;
      if (grid.rowSpacing && grid.columnSpacing) {
        return { value: Math.hypot(dx * grid.columnSpacing, dy * grid.rowSpacing), unit: "mm", kind: grid.spacingKind };
      }
      return { value: Math.hypot(dx, dy), unit: "px", kind: "" };
    }

    updateOverlay() {
      const imageLine = $(".image-line", this.el);
      if (imageLine) imageLine.textContent = this.source.label(this.index);
      const seriesLine = $(".series-line", this.el);
      if (seriesLine) {
        const s = this.source.series;
        seriesLine.textContent = `Se ${s.number ?? ""} ${s.modality} ${s.description || ""}`.trim();
      }
      const windowLine = $(".window-line", this.el);
      if (windowLine) {
        const w = state.window || (this.source.series.windows[0] || null);
        windowLine.textContent = w ? `W ${Math.round(w.width)} L ${Math.round(w.center)}` : "W/L auto";
        this.el.dataset.window = w ? `${w.center},${w.width}` : "";
      }
      const zoomLine = $(".zoom-line", this.el);
      const l = this.layout();
      if (zoomLine && l) zoomLine.textContent = `Zoom ${(l.scale / l.ratio).toFixed(2)}×`;
      const spacingLine = $(".spacing-line", this.el);
      if (spacingLine) {
        const g = this.source.grid(this.index);
        spacingLine.textContent = g.rowSpacing ? `${g.columnSpacing.toFixed(2)}×${g.rowSpacing.toFixed(2)} mm` : "no spacing";
      }
    }

    // Pointer input: one pointer uses the tool, two pointers pinch-zoom and pan.
    bindPointer() {
      const pointers = new Map();
      let gesture = null;
      this.el.addEventListener("pointerdown", (event) => {
        this.el.focus({ preventScroll: true });
        this.el.setPointerCapture(event.pointerId);
        pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
        if (pointers.size === 2) {
          const [a, b] = [...pointers.values()];
          this.pending = null;
          gesture = { kind: "pinch", distance: Math.hypot(a.x - b.x, a.y - b.y), mid: midpoint(a, b), zoom: this.zoom, pan: { ...this.pan } };
        } else if (pointers.size === 1) {
          const tool = event.button === 2 ? "window" : state.tool; // right-drag always windows
          gesture = { kind: tool, x: event.clientX, y: event.clientY, zoom: this.zoom, pan: { ...this.pan },
            window: state.window ? { ...state.window } : defaultWindow(this.source.series), index: this.index };
          if (tool === "measure") {
            const start = this.toSource(event.clientX, event.clientY);
            if (start) this.pending = { start, end: start };
          }
        }
        event.preventDefault();
      });
      this.el.addEventListener("pointermove", (event) => {
        if (!pointers.has(event.pointerId) || !gesture) return;
        pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
        if (gesture.kind === "pinch" && pointers.size === 2) {
          const [a, b] = [...pointers.values()];
          const mid = midpoint(a, b);
          this.zoom = clamp(gesture.zoom * Math.hypot(a.x - b.x, a.y - b.y) / Math.max(gesture.distance, 1), 0.1, 20);
          this.pan = { x: gesture.pan.x + mid.x - gesture.mid.x, y: gesture.pan.y + mid.y - gesture.mid.y };
          this.draw();
          return;
        }
        const dx = event.clientX - gesture.x;
        const dy = event.clientY - gesture.y;
        if (gesture.kind === "window") {
          const factor = Math.max(0.5, gesture.window.width / 300);
          setWindow({ center: gesture.window.center + dy * factor, width: Math.max(1, gesture.window.width + dx * factor) });
        } else if (gesture.kind === "scroll") {
          this.show(gesture.index + Math.round(dy / 6));
        } else if (gesture.kind === "zoom") {
          this.zoom = clamp(gesture.zoom * Math.exp(-dy / 150), 0.1, 20);
          this.draw();
        } else if (gesture.kind === "pan") {
          this.pan = { x: gesture.pan.x + dx, y: gesture.pan.y + dy };
          this.draw();
        } else if (gesture.kind === "measure" && this.pending) {
          this.pending.end = this.toSource(event.clientX, event.clientY) || this.pending.end;
          this.drawAnnotations();
        }
      });
      const end = (event) => {
        if (!pointers.has(event.pointerId)) return;
        pointers.delete(event.pointerId);
        if (gesture && gesture.kind === "measure" && this.pending) {
          const line = this.pending;
          this.pending = null;
          if (Math.hypot(line.end.x - line.start.x, line.end.y - line.start.y) > 1) this.addMeasurement(line);
          this.drawAnnotations();
        }
        if (gesture && gesture.kind === "window") windowDone();
        gesture = pointers.size ? gesture : null;
      };
      this.el.addEventListener("pointerup", end);
      this.el.addEventListener("pointercancel", end);
      this.el.addEventListener("contextmenu", (event) => event.preventDefault());
      const wheelSteps = wheelStepper();
      this.el.addEventListener("wheel", (event) => {
        event.preventDefault();
        const steps = wheelSteps(event);
        if (steps) this.step(steps);
      }, { passive: false });
      this.el.addEventListener("dblclick", (event) => syncFrom(this, event));
      this.el.addEventListener("pointermove", (event) => showMapValue(this, event));
    }

    addMeasurement(line) {
      line.index = this.drawn.index;
      const key = this.source.key(this.drawn.index);
      const lines = this.measurements.get(key) || [];
      lines.push(line);
      this.measurements.set(key, lines);
      renderMeasurements();
    }
  }

  function indexOfBytes(haystack, needle, from) {
    for (let i = haystack.indexOf(needle[0], from); i !== -1 && i <= haystack.length - needle.length;
      i = haystack.indexOf(needle[0], i + 1)) {
      let j = 1;
      while (j < needle.length && haystack[i + j] === needle[j]) j += 1;
      if (j === needle.length) return i;
    }
    return -1;
  }

  // Calls onPart(headers, body) for each part of a multipart body as soon as it is complete.
  async function readMultipart(reader, boundary, onPart) {
    const encoder = new TextEncoder();
    const decoder = new TextDecoder();
    const delimiter = encoder.encode(`--${boundary}`);
    let buffer = new Uint8Array(0);
    for (;;) {
      const { done, value } = await reader.read();
      if (value) {
        const joined = new Uint8Array(buffer.length + value.length);
        joined.set(buffer);
        joined.set(value, buffer.length);
        buffer = joined;
      }
      for (;;) {
        const start = indexOfBytes(buffer, delimiter, 0);
        if (start < 0) break;
        const next = indexOfBytes(buffer, delimiter, start + delimiter.length);
        if (next < 0) break;
        const part = buffer.subarray(start + delimiter.length + 2, next - 2);
        const split = indexOfBytes(part, encoder.encode("\r\n\r\n"), 0);
        if (split >= 0) {
          const headers = {};
          decoder.decode(part.subarray(0, split)).split("\r\n").forEach((line) => {
            const colon = line.indexOf(":");
            if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
          });
          onPart(headers, part.slice(split + 4));
        }
        buffer = buffer.slice(next);
      }
      if (done) return;
    }
  }

  function midpoint(a, b) {
    return { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
  }

  function formatLength(length) {
    const value = length.unit === "mm" ? length.value.toFixed(1) : length.value.toFixed(0);
    return `${value} ${length.unit}${length.kind === "detector" ? " (detector)" : ""}`;
  }

  // Window/level: overlay at once, server re-render debounced ------------------------

  let windowTimer = null;
  function setWindow(value) {
    state.window = value ? { center: value.center, width: value.width } : null;
    state.viewports.forEach((vp) => vp.updateOverlay());
    clearTimeout(windowTimer);
    windowTimer = setTimeout(rerender, WINDOW_RENDER_DELAY_MS);
  }

  function rerender() {
    state.viewports.forEach((vp) => {
      vp.resetImages();
      vp.show(vp.index);
    });
  }

  function windowDone() {
    clearTimeout(windowTimer);
    rerender();
  }

  // MPR: double-click a point to bring the other planes there ----------------------------

  function syncFrom(source, event) {
    if (!state.mpr || source.source.kind !== "mpr") return;
    const point = source.toSource(event.clientX, event.clientY);
    if (!point) return;
    const views = Object.fromEntries(state.viewports.map((vp) => [vp.source.plane, vp]));
    const row = Math.round(point.y);
    const column = Math.round(point.x);
    const axialCount = views.axial ? views.axial.source.count : 0;
    // Display conventions are fixed (see viewer.mpr): axial rows run anterior→posterior
    // (the coronal index) and columns right→left (the sagittal index); coronal and
    // sagittal rows run head→feet, against the axial index.
    const targets = {
      axial: { coronal: row, sagittal: column },
      coronal: { axial: axialCount - 1 - row, sagittal: column },
      sagittal: { axial: axialCount - 1 - row, coronal: column },
    }[source.source.plane];
    for (const [plane, index] of Object.entries(targets)) {
      if (views[plane]) views[plane].show(index);
    }
  }

  // Page assembly ---------------------------------------------------------------------

  function selectSeries(series, options = {}) {
    state.series = series;
    document.querySelectorAll(".series-list button").forEach((b) => {
      b.setAttribute("aria-current", b.dataset.series === series.id ? "true" : "false");
    });
    fillPresets(series);
    const mprButton = document.getElementById("mpr-toggle");
    mprButton.disabled = !series.mpr;
    if (state.mpr && !series.mpr) state.mpr = false;
    layoutViewports(options.index);
  }

  function layoutViewports(index) {
    const container = document.getElementById("viewports");
    const template = document.getElementById("stack-viewport");
    state.viewports.forEach((vp) => { if (vp.el !== template) vp.el.remove(); });
    state.viewports = [];
    document.getElementById("mpr-toggle").setAttribute("aria-pressed", String(state.mpr));
    $(".slab-label").hidden = !state.mpr;
    container.classList.toggle("mpr", state.mpr);
    if (!state.mpr) {
      template.hidden = false;
      const previous = template.viewport;
      // Coming back from MPR to the same series keeps the image the reader was on.
      const keep = index == null && previous && previous.source.series === state.series ? previous.index : index;
      const vp = previous || new Viewport(template, new StackSource(state.series));
      template.viewport = vp;
      vp.setSource(new StackSource(state.series), keep);
      state.viewports.push(vp);
      vp.resize();
      vp.show(vp.index);
      return;
    }
    template.hidden = true;
    for (const plane of ["axial", "coronal", "sagittal"]) {
      const el = template.cloneNode(true);
      el.hidden = false;
      el.id = `${plane}-viewport`;
      el.setAttribute("aria-label", `${plane} reformat`);
      el.viewport = null;
      for (const name of ["shown", "loaded", "index", "window"]) delete el.dataset[name];
      container.appendChild(el);
      const vp = new Viewport(el, new MprSource(state.series, plane));
      state.viewports.push(vp);
    }
    state.viewports.forEach((vp) => { vp.resize(); vp.show(vp.index); });
  }

  function fillPresets(series) {
    const select = document.getElementById("preset");
    select.replaceChildren(new Option("Image default", ""));
    (series.windows || []).forEach((w, i) => {
      select.appendChild(new Option(`${w.explanation || `File ${i + 1}`} (${Math.round(w.center)}/${Math.round(w.width)})`, `${w.center},${w.width}`));
    });
    for (const [name, w] of Object.entries(state.manifest.presets)) {
      select.appendChild(new Option(`${name[0].toUpperCase()}${name.slice(1)} (${w.center}/${w.width})`, `${w.center},${w.width}`));
    }
  }

  function buildSeriesList() {
    const list = document.getElementById("series-list");
    list.replaceChildren();
    state.manifest.series.forEach((series) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.series = series.id;
      const thumb = new Image();
      thumb.alt = "";
      thumb.loading = "lazy";
      thumb.src = series.thumbnail;
      const text = document.createElement("span");
      const count = series.instances.reduce((n, i) => n + i.frames, 0);
      text.textContent = `${series.number ?? ""} ${series.modality} ${series.description || ""} (${count})`.trim();
      button.append(thumb, text);
      button.addEventListener("click", () => selectSeries(series));
      item.appendChild(button);
      list.appendChild(item);
    });
  }

  function renderMeasurements() {
    const list = document.getElementById("measurements");
    list.replaceChildren();
    state.viewports.forEach((vp) => {
      for (const [key, lines] of vp.measurements) {
        lines.forEach((line, i) => {
          const item = document.createElement("li");
          const label = document.createElement("span");
          label.className = "measurement";
          label.textContent = `${formatLength(vp.length(line))} — ${vp.source.label(line.index)}`;
          const remove = document.createElement("button");
          remove.type = "button";
          remove.className = "link";
          remove.textContent = "×";
          remove.setAttribute("aria-label", "Delete measurement");
          remove.addEventListener("click", () => {
            lines.splice(i, 1);
            if (!lines.length) vp.measurements.delete(key);
            renderMeasurements();
            vp.drawAnnotations();
          });
          item.append(label, remove);
          list.appendChild(item);
        });
      }
    });
  }

  // Key images ---------------------------------------------------------------------

  function currentFrame() {
    const vp = state.viewports.find((v) => v.source.kind === "stack");
    if (!vp) return null;
    const { instance, frame } = vp.source.frames[vp.index];
    return { instance, frame };
  }

  function myKeyImage() {
    const current = currentFrame();
    if (!current) return null;
    return state.keyImages.find((k) => k.mine && k.instance === current.instance.id && k.frame === current.frame) || null;
  }

  function updateKeyButton() {
    const button = document.getElementById("key-image");
    const marked = Boolean(myKeyImage());
    button.setAttribute("aria-pressed", String(marked));
    button.textContent = marked ? "★ Key image" : "☆ Key image";
    button.disabled = state.mpr;
  }

  async function toggleKeyImage() {
    const current = currentFrame();
    if (!current) return;
    const existing = myKeyImage();
    if (existing) {
      await api(`/api/v1/viewer/key-images/${existing.id}/`, { method: "DELETE" });
      state.keyImages = state.keyImages.filter((k) => k.id !== existing.id);
    } else {
      const row = await api(root.dataset.keyImages, {
        method: "POST",
        body: JSON.stringify({ instance: current.instance.id, frame: current.frame }),
      });
      state.keyImages = state.keyImages.filter((k) => k.id !== row.id).concat([row]);
    }
    renderKeyImages();
  }

  function renderKeyImages() {
    const list = document.getElementById("key-list");
    list.replaceChildren();
    document.getElementById("key-empty").hidden = state.keyImages.length > 0;
    state.keyImages.forEach((k) => {
      const item = document.createElement("li");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "key-open";
      const thumb = new Image();
      thumb.alt = `Key image: ${k.label}`;
      thumb.src = `${k.rendered}?viewport=96,96&quality=80`;
      const label = document.createElement("span");
      label.className = "key-label";
      label.textContent = k.label;
      const text = document.createElement("span");
      text.textContent = `${k.user}${k.note ? ` — ${k.note}` : ""}`;
      open.append(thumb, label, text);
      open.addEventListener("click", () => {
        const series = state.manifest.series.find((s) => s.id === k.series);
        if (!series) return;
        state.mpr = false;
        const index = new StackSource(series).indexOf(k.instance, k.frame);
        selectSeries(series, { index: Math.max(index, 0) });
      });
      item.appendChild(open);
      list.appendChild(item);
    });
    updateKeyButton();
  }

  // Cine ------------------------------------------------------------------------------

  function toggleCine() {
    const button = document.getElementById("cine");
    if (state.cine) {
      clearInterval(state.cine);
      state.cine = null;
      button.setAttribute("aria-pressed", "false");
      return;
    }
    const fps = clamp(Number(document.getElementById("cine-fps").value) || 15, 1, 60);
    const vp = state.viewports[0];
    state.cine = setInterval(() => {
      const next = (vp.index + 1) % vp.source.count;
      // Wait for the next image rather than showing a blank.
      if (vp.images.has(vp.url(next))) vp.show(next);
      else vp.load(next).catch(() => {});
    }, 1000 / fps);
    button.setAttribute("aria-pressed", "true");
  }

  // Parametric Maps over the anatomy (DCE-MRI results of viewer/analysis) ---------------

  // Dark blue → cyan → yellow → red, as on the DCE analysis page.
  function mapColour(x) {
    const t = clamp(x, 0, 1);
    const part = (centre) => Math.round(255 * clamp(1.5 - Math.abs(4 * t - centre), 0, 1));
    return [part(3), part(2), part(1)];
  }

  // A plane's values as a small canvas (one pixel per value); zero is outside the mask, left clear.
  function paintPlane(plane) {
    const inside = plane.values.filter((v) => v !== 0);
    plane.low = inside.length ? Math.min(...inside) : plane.min;
    plane.high = inside.length ? Math.max(...inside) : plane.max;
    const span = plane.high - plane.low || 1;
    const canvas = document.createElement("canvas");
    canvas.width = plane.columns;
    canvas.height = plane.rows;
    const context = canvas.getContext("2d");
    const image = context.createImageData(plane.columns, plane.rows);
    plane.values.forEach((v, i) => {
      if (v === 0) return;
      const [r, g, b] = mapColour((v - plane.low) / span);
      image.data.set([r, g, b, 255], i * 4);
    });
    context.putImageData(image, 0, 0);
    plane.canvas = canvas;
    return plane;
  }

  // The chosen map's plane on image ``index`` of a stack; fetched once, null until it has arrived or where none lies.
  function mapPlane(vp, index) {
    const overlay = state.overlay;
    if (!overlay.map || vp.source.kind !== "stack") return null;
    const { instance, frame } = vp.source.frames[index];
    const key = `${overlay.map.id}/${instance.id}/${frame}`;
    if (overlay.planes.has(key)) return overlay.planes.get(key);
    if (!overlay.pending.has(key)) {
      overlay.pending.add(key);
      api(`${root.dataset.maps}${overlay.map.id}/values/?over=${instance.id}&frame=${frame}`)
        .then((plane) => paintPlane(plane), () => null)
        .then((plane) => {
          overlay.pending.delete(key);
          overlay.planes.set(key, plane);
          state.viewports.forEach((v) => v.draw());
        });
    }
    return null;
  }

  function drawParametricMap(vp, l) {
    const plane = mapPlane(vp, vp.drawn.index);
    vp.el.dataset.map = plane ? plane.label : "";
    if (!plane) return;
    vp.ctx.save();
    vp.ctx.globalAlpha = 0.6;
    vp.ctx.imageSmoothingEnabled = false;
    vp.ctx.drawImage(plane.canvas, l.x, l.y, l.image.naturalWidth * l.scale, l.image.naturalHeight * l.scale);
    vp.ctx.restore();
    showColourBar(plane);
  }

  function showColourBar(plane) {
    if (state.overlay.shown === plane) return;
    state.overlay.shown = plane;
    const bar = document.getElementById("map-colorbar");
    const context = bar.getContext("2d");
    for (let x = 0; x < bar.width; x += 1) {
      const [r, g, b] = mapColour(x / (bar.width - 1));
      context.fillStyle = `rgb(${r},${g},${b})`;
      context.fillRect(x, 0, 1, bar.height);
    }
    bar.hidden = false;
    document.getElementById("map-range").textContent =
      `${plane.low.toPrecision(3)} – ${plane.high.toPrecision(3)} ${plane.unit}`;
  }

  function showMapValue(vp, event) {
    if (!state.overlay.map || !vp.drawn || vp.source.kind !== "stack") return;
    const { instance, frame } = vp.source.frames[vp.drawn.index];
    const plane = state.overlay.planes.get(`${state.overlay.map.id}/${instance.id}/${frame}`);
    const point = plane && vp.toSource(event.clientX, event.clientY);
    const text = document.getElementById("map-value");
    if (!point) {
      text.textContent = "";
      return;
    }
    const x = Math.floor(point.x);
    const y = Math.floor(point.y);
    if (x < 0 || y < 0 || x >= plane.columns || y >= plane.rows) {
      text.textContent = "";
      return;
    }
    const value = plane.values[y * plane.columns + x];
    text.textContent = `${plane.label} ${Number(value).toPrecision(3)} ${plane.unit} at (${x}, ${y})`;
  }

  function chooseMap(id) {
    state.overlay.map = state.overlay.maps.find((m) => m.id === id) || null;
    state.overlay.shown = null;
    document.getElementById("map-colorbar").hidden = true;
    document.getElementById("map-range").textContent = "";
    document.getElementById("map-value").textContent = "";
    state.viewports.forEach((vp) => vp.draw());
  }

  async function offerMaps() {
    const listed = await api(`${root.dataset.maps}?study=${encodeURIComponent(root.dataset.study)}`);
    state.overlay.maps = listed.results;
    if (!listed.results.length) return;
    const select = document.getElementById("map-select");
    listed.results.forEach((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = `${m.label} (${m.unit})`;
      option.title = m.description;
      select.append(option);
    });
    select.addEventListener("change", () => chooseMap(select.value));
    document.getElementById("map-controls").hidden = false;
  }

  // Controls --------------------------------------------------------------------------

  function setTool(tool) {
    state.tool = tool;
    document.querySelectorAll(".tool").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.tool === tool)));
  }

  function bindControls() {
    document.querySelectorAll(".tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
    document.getElementById("preset").addEventListener("change", (event) => {
      const value = event.target.value;
      if (!value) setWindow(null);
      else {
        const [center, width] = value.split(",").map(Number);
        setWindow({ center, width });
      }
      windowDone();
    });
    document.getElementById("cine").addEventListener("click", toggleCine);
    document.getElementById("mpr-toggle").addEventListener("click", () => {
      if (!state.series || !state.series.mpr) return;
      state.mpr = !state.mpr;
      layoutViewports();
      updateKeyButton();
    });
    document.getElementById("slab").addEventListener("change", (event) => {
      const [mm, mode] = event.target.value.split(":");
      state.slab = { mm: Number(mm), mode: mode || "mip" };
      rerender();
    });
    document.getElementById("key-image").addEventListener("click", () => toggleKeyImage().catch(() => {}));
    document.getElementById("reset").addEventListener("click", resetView);
    document.addEventListener("keydown", onKey);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => state.viewports.forEach((vp) => vp.resize()), 100);
    });
  }

  function resetView() {
    state.viewports.forEach((vp) => { vp.zoom = 1; vp.pan = { x: 0, y: 0 }; });
    document.getElementById("preset").value = "";
    setWindow(null);
    windowDone();
  }

  function onKey(event) {
    if (event.target.closest("input, select, textarea")) return;
    const focused = state.viewports.find((vp) => vp.el.contains(document.activeElement)) || state.viewports[0];
    if (!focused) return;
    const keys = {
      ArrowUp: () => focused.step(-1), ArrowLeft: () => focused.step(-1),
      ArrowDown: () => focused.step(1), ArrowRight: () => focused.step(1),
      PageUp: () => focused.step(-10), PageDown: () => focused.step(10),
      Home: () => focused.show(0), End: () => focused.show(focused.source.count - 1),
      " ": toggleCine, k: () => toggleKeyImage().catch(() => {}), r: resetView,
      w: () => setTool("window"), s: () => setTool("scroll"), z: () => setTool("zoom"),
      p: () => setTool("pan"), m: () => setTool("measure"),
    };
    const action = keys[event.key] || keys[event.key.toLowerCase()];
    if (action && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      action();
    }
  }

  async function start() {
    try {
      state.manifest = await api(root.dataset.manifest);
    } catch (error) {
      root.classList.add("failed");
      $(".progress-text").textContent = "The study could not be opened.";
      return;
    }
    state.keyImages = state.manifest.key_images;
    buildSeriesList();
    bindControls();
    if (!state.manifest.series.length) {
      $(".progress-text").textContent = "This study has no images.";
      return;
    }
    // On a touch screen a finger scrolls the stack; window/level is a tool away.
    if (window.matchMedia && window.matchMedia("(pointer: coarse)").matches) setTool("scroll");
    selectSeries(state.manifest.series[0]);
    renderKeyImages();
    offerMaps().catch(() => {});
    root.dataset.ready = "true";
  }

  start();
})();
