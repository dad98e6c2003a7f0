// Cloud PACS comparison view: the study being read beside its relevant priors.
// Slices line up by patient position (Image Position along the slice normal),
// not by index, so series of different thickness and start scroll in step.
// Images are rendered on the server as in the single viewer; no inline code (CSP).
(() => {
  "use strict";

  const root = document.getElementById("compare");
  if (!root) return;

  const CONCURRENCY = 4;
  const WINDOW_RENDER_DELAY_MS = 80;

  const state = {
    tool: "window",
    layout: root.dataset.layout,
    panes: [],
    current: null, // the manifest of the study being read
    priors: [], // from the priors API: id, date, description, reports
    manifests: new Map(), // study id -> manifest (fetched once)
    prior: null, // the prior shown
    sync: true,
    linkWindow: false,
    linkZoom: false,
    referenceLines: true,
    protocol: null, // the hanging protocol applied on open (until the reader picks another layout)
    facts: { modality: "", body_region: "" },
  };
  const stats = { draws: 0 };
  window.pacsCompare = { state, stats };

  const $ = (selector, el = document) => el.querySelector(selector);
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];

  async function api(url, options = {}) {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRFToken": root.dataset.csrf },
      ...options,
    });
    if (!response.ok) throw new Error(`${response.status} ${url}`);
    return response.json();
  }

  async function manifest(studyId, url) {
    if (!state.manifests.has(studyId)) state.manifests.set(studyId, api(url));
    return state.manifests.get(studyId);
  }

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, (_, key) => encodeURIComponent(values[key]));
  }

  function defaultWindow(series) {
    if (series.windows && series.windows.length) return { ...series.windows[0] };
    const range = series.value_range;
    if (range) return { center: (range[0] + range[1]) / 2, width: Math.max(1, range[1] - range[0]) };
    return { center: 128, width: 256 };
  }

  // The frames of a series, each with its position along the slice normal (mm)
  // when the series is a stack of single-frame images with a known geometry.
  function geometry(series) {
    const o = series.orientation;
    const normal = o ? cross(o.slice(0, 3), o.slice(3, 6)) : null;
    const frames = [];
    series.instances.forEach((instance) => {
      for (let frame = 1; frame <= instance.frames; frame += 1) {
        const z = normal && instance.position && instance.frames === 1 ? dot(instance.position, normal) : null;
        frames.push({ instance, frame, z });
      }
    });
    return { frames, normal, orientation: o };
  }

  // A pane: one series of one study on a canvas --------------------------------------

  class Pane {
    constructor(el, role) {
      this.el = el;
      this.role = role; // "current" or "prior"
      this.canvas = $("canvas.image", el);
      this.ctx = this.canvas.getContext("2d");
      this.lines = $("canvas.annotations", el);
      this.lctx = this.lines.getContext("2d");
      this.zoom = 1;
      this.window = null;
      this.shift = 0; // added to this pane's positions to line them up with the others
      this.images = new Map();
      this.inflight = new Map();
      this.generation = 0;
      this.index = 0;
      this.bindPointer();
    }

    setSeries(study, series, index) {
      this.study = study;
      this.series = series;
      const { frames, normal, orientation } = geometry(series);
      this.frames = frames;
      this.normal = normal;
      this.orientation = orientation;
      this.el.dataset.study = study.id;
      this.el.dataset.series = series.uid;
      this.el.dataset.count = String(frames.length);
      $(".pane-title", this.el).textContent =
        `${this.role === "current" ? "Current" : "Prior"} · ${study.study_date || "undated"} · ${study.description || ""}`;
      const select = $("select", this.el);
      select.replaceChildren(...study.series.map((s) => {
        const option = new Option(`${s.number ?? ""} ${s.modality} ${s.description || ""}`.trim(), s.id);
        option.selected = s.id === series.id;
        return option;
      }));
      this.resetImages();
      this.show(index != null ? index : Math.floor(frames.length / 2));
    }

    get z() {
      const f = this.frames && this.frames[this.index];
      return f && f.z != null ? f.z + this.shift : null;
    }

    resetImages() {
      this.generation += 1;
      this.images = new Map();
      this.inflight = new Map();
    }

    url(index) {
      const { instance, frame } = this.frames[index];
      const base = fill(this.study.urls.rendered, {
        study: this.study.study_instance_uid, series: this.series.uid, sop: instance.sop, frame,
      });
      const w = this.window;
      return w ? `${base}?window=${w.center.toFixed(1)},${w.width.toFixed(1)},linear` : base;
    }

    load(index) {
      const url = this.url(index);
      if (this.images.has(url)) return Promise.resolve(this.images.get(url));
      if (this.inflight.has(url)) return this.inflight.get(url);
      const generation = this.generation;
      const image = new Image();
      image.decoding = "async";
      image.src = url;
      const promise = image.decode().then(() => {
        this.inflight.delete(url);
        if (generation === this.generation) this.images.set(url, image);
        return image;
      }, (error) => {
        this.inflight.delete(url);
        throw error;
      });
      this.inflight.set(url, promise);
      return promise;
    }

    show(index) {
      if (!this.frames.length) return;
      this.index = Math.max(0, Math.min(this.frames.length - 1, index));
      this.el.dataset.index = String(this.index);
      const z = this.z;
      this.el.dataset.z = z == null ? "" : z.toFixed(2);
      const wanted = this.index;
      const ready = this.images.get(this.url(wanted));
      if (ready) this.draw(ready);
      else this.load(wanted).then((image) => { if (this.index === wanted) this.draw(image); }, () => {});
      this.prefetch();
      this.updateOverlay();
    }

    step(delta) {
      this.show(this.index + delta);
      if (state.sync) followPosition(this);
    }

    // The frame nearest to ``z`` (in lined-up coordinates), or null without geometry.
    nearest(z) {
      let best = null;
      let distance = Infinity;
      this.frames.forEach((f, i) => {
        if (f.z == null) return;
        const d = Math.abs(f.z + this.shift - z);
        if (d < distance) { distance = d; best = i; }
      });
      return best;
    }

    prefetch() {
      // Neighbours first, then the rest of the series, a few at a time.
      const order = [];
      for (let d = 1; d < this.frames.length; d += 1) {
        if (this.index + d < this.frames.length) order.push(this.index + d);
        if (this.index - d >= 0) order.push(this.index - d);
      }
      this.queue = order;
      this.active = this.active || 0;
      const pump = () => {
        while (this.active < CONCURRENCY && this.queue.length) {
          const i = this.queue.shift();
          const url = this.url(i);
          if (this.images.has(url) || this.inflight.has(url)) continue;
          this.active += 1;
          this.load(i).catch(() => {}).finally(() => { this.active -= 1; pump(); });
        }
      };
      pump();
    }

    resize() {
      const rect = this.el.getBoundingClientRect();
      const ratio = window.devicePixelRatio || 1;
      for (const canvas of [this.canvas, this.lines]) {
        canvas.width = Math.max(1, Math.round(rect.width * ratio));
        canvas.height = Math.max(1, Math.round(rect.height * ratio));
      }
      if (this.drawn) this.draw(this.drawn);
    }

    // Image pixel (column, row) -> canvas point, for the image as drawn.
    placement(image) {
      const scale = Math.min(this.canvas.width / image.naturalWidth, this.canvas.height / image.naturalHeight) * this.zoom;
      const left = (this.canvas.width - image.naturalWidth * scale) / 2;
      const top = (this.canvas.height - image.naturalHeight * scale) / 2;
      return { scale, left, top };
    }

    draw(image) {
      this.drawn = image;
      const { scale, left, top } = this.placement(image);
      this.ctx.fillStyle = "#000";
      this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
      this.ctx.drawImage(image, left, top, image.naturalWidth * scale, image.naturalHeight * scale);
      stats.draws += 1;
      this.el.dataset.shown = String(this.index);
      this.updateOverlay();
      drawReferenceLines();
    }

    updateOverlay() {
      const z = this.z;
      $(".image-line", this.el).textContent = `Im ${this.index + 1}/${this.frames.length}`;
      $(".position-line", this.el).textContent = z == null ? "" : `Position ${z.toFixed(1)} mm`;
      const w = this.window || defaultWindow(this.series);
      $(".window-line", this.el).textContent = `W ${Math.round(w.width)} L ${Math.round(w.center)}`;
      $(".zoom-line", this.el).textContent = `Zoom ${Math.round(this.zoom * 100)} %`;
      this.el.dataset.window = `${Math.round(w.center)},${Math.round(w.width)}`;
      this.el.dataset.zoom = this.zoom.toFixed(2);
    }

    bindPointer() {
      this.el.addEventListener("wheel", (event) => {
        event.preventDefault();
        const direction = Math.sign(event.deltaY);
        if (direction) this.step(direction);
      }, { passive: false });
      this.el.addEventListener("keydown", (event) => {
        const delta = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 }[event.key];
        if (delta) { event.preventDefault(); this.step(delta); }
      });
      this.el.addEventListener("pointerdown", (event) => {
        if (event.target.closest("select")) return;
        this.el.focus();
        this.el.setPointerCapture(event.pointerId);
        const start = { x: event.clientX, y: event.clientY, window: this.window || defaultWindow(this.series), zoom: this.zoom };
        const move = (e) => {
          const dx = e.clientX - start.x;
          const dy = e.clientY - start.y;
          if (state.tool === "window") {
            setWindow(this, { center: start.window.center + dy * 2, width: Math.max(1, start.window.width + dx * 4) });
          } else {
            setZoom(this, Math.max(0.25, Math.min(8, start.zoom * Math.exp(-dy / 150))));
          }
        };
        const up = () => {
          this.el.removeEventListener("pointermove", move);
          this.el.removeEventListener("pointerup", up);
          this.el.removeEventListener("pointercancel", up);
        };
        this.el.addEventListener("pointermove", move);
        this.el.addEventListener("pointerup", up);
        this.el.addEventListener("pointercancel", up);
      });
    }
  }

  // Linking ------------------------------------------------------------------------

  function followPosition(leader) {
    const z = leader.z;
    if (z == null) return;
    state.panes.forEach((pane) => {
      if (pane === leader) return;
      const index = pane.nearest(z);
      if (index != null && index !== pane.index) pane.show(index);
    });
  }

  // Line up the slices now shown: from here on they scroll in step.
  function realign() {
    const leader = state.panes[0];
    if (!leader || leader.z == null) return;
    state.panes.slice(1).forEach((pane) => {
      const f = pane.frames[pane.index];
      if (f && f.z != null) pane.shift = leader.z - f.z;
      pane.updateOverlay();
      pane.el.dataset.z = pane.z == null ? "" : pane.z.toFixed(2);
    });
  }

  const windowTimers = new Map();
  function setWindow(pane, value) {
    const targets = state.linkWindow ? state.panes : [pane];
    targets.forEach((p) => {
      p.window = { ...value };
      p.updateOverlay();
      clearTimeout(windowTimers.get(p));
      windowTimers.set(p, setTimeout(() => { p.resetImages(); p.show(p.index); }, WINDOW_RENDER_DELAY_MS));
    });
  }

  function setZoom(pane, zoom) {
    (state.linkZoom ? state.panes : [pane]).forEach((p) => {
      p.zoom = zoom;
      if (p.drawn) p.draw(p.drawn);
    });
    drawReferenceLines();
  }

  // Reference lines: where each other pane's slice cuts this pane's image plane
  // (panes of the same study, whose positions share one frame of reference).
  function drawReferenceLines() {
    state.panes.forEach((pane) => {
      const ctx = pane.lctx;
      ctx.clearRect(0, 0, pane.lines.width, pane.lines.height);
      pane.el.dataset.referenceLines = "0";
      if (!state.referenceLines || !pane.drawn || !pane.orientation) return;
      const here = pane.frames[pane.index].instance;
      if (!here.position || !here.pixel_spacing) return;
      let drawn = 0;
      state.panes.forEach((other) => {
        if (other === pane || other.study.id !== pane.study.id || !other.normal) return;
        const there = other.frames[other.index].instance;
        if (!there.position) return;
        const segment = cut(here, pane.orientation, there.position, other.normal);
        if (!segment) return;
        const { scale, left, top } = pane.placement(pane.drawn);
        ctx.strokeStyle = "#f0c040";
        ctx.lineWidth = Math.max(1, window.devicePixelRatio || 1);
        ctx.beginPath();
        ctx.moveTo(left + segment[0][0] * scale, top + segment[0][1] * scale);
        ctx.lineTo(left + segment[1][0] * scale, top + segment[1][1] * scale);
        ctx.stroke();
        drawn += 1;
      });
      pane.el.dataset.referenceLines = String(drawn);
    });
  }

  // The segment (in pixel columns, rows) where the plane through ``point`` with
  // ``normal`` crosses the image, or null when the planes are (nearly) parallel.
  function cut(instance, orientation, point, normal) {
    const rowDir = orientation.slice(0, 3); // along a row: increasing column
    const colDir = orientation.slice(3, 6);
    const [rowSpacing, columnSpacing] = instance.pixel_spacing;
    const a = dot(rowDir, normal) * columnSpacing; // plane value change per column
    const b = dot(colDir, normal) * rowSpacing; // per row
    if (Math.abs(a) < 1e-6 && Math.abs(b) < 1e-6) return null;
    const c0 = dot(instance.position, normal) - dot(point, normal);
    // Points where c0 + a*col + b*row = 0 on the image border.
    const found = [];
    const maxCol = instance.columns - 1;
    const maxRow = instance.rows - 1;
    if (Math.abs(b) > 1e-9) {
      for (const col of [0, maxCol]) {
        const row = -(c0 + a * col) / b;
        if (row >= 0 && row <= maxRow) found.push([col + 0.5, row + 0.5]);
      }
    }
    if (Math.abs(a) > 1e-9) {
      for (const row of [0, maxRow]) {
        const col = -(c0 + b * row) / a;
        if (col >= 0 && col <= maxCol) found.push([col + 0.5, row + 0.5]);
      }
    }
    return found.length >= 2 ? [found[0], found[found.length - 1]] : null;
  }

  // Layout ---------------------------------------------------------------------------

  function imageSeries(study) {
    return study.series.filter((s) => s.instances.length);
  }

  // The series a protocol's pane asks for: by description when it names one, else by rank.
  function pickSeries(study, spec) {
    const list = imageSeries(study);
    const wanted = (spec.series_description || "").toLowerCase();
    const named = wanted ? list.find((s) => (s.description || "").toLowerCase().includes(wanted)) : null;
    return named || list[spec.series || 0] || list[0];
  }

  function defaultPlan(current, ordered) {
    const cs = imageSeries(current);
    const chosen = ordered[0];
    const plan = [{ role: "current", study: current, series: cs[0] }];
    if (chosen) plan.push({ role: "prior", study: chosen, series: imageSeries(chosen)[0] });
    if (state.layout === "2x2") {
      plan.push({ role: "current", study: current, series: cs[1] || cs[0] });
      const second = ordered[1];
      if (chosen) {
        plan.push(second
          ? { role: "prior", study: second, series: imageSeries(second)[0] }
          : { role: "prior", study: chosen, series: imageSeries(chosen)[1] || imageSeries(chosen)[0] });
      }
    }
    return plan;
  }

  function protocolPlan(current, ordered) {
    return state.protocol.panes.map((spec) => {
      const study = spec.study === "current" ? current : ordered[spec.prior || 0];
      return study ? { role: spec.study, study, series: pickSeries(study, spec), window: spec.window } : null;
    }).filter(Boolean);
  }

  async function arrange() {
    const grid = document.getElementById("compare-grid");
    grid.className = `compare-grid layout-${state.layout}`;
    document.querySelectorAll(".layout").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.layout === state.layout)));
    grid.replaceChildren();
    state.panes = [];
    const current = state.current;
    const priorManifests = [];
    for (const prior of state.priors) {
      try {
        priorManifests.push(await manifest(prior.id, `/api/v1/viewer/studies/${prior.id}/`));
      } catch (error) {
        // A prior no longer granted (the task was released): leave it out.
      }
    }
    // The prior the reader picked comes first; the others follow newest first.
    const picked = priorManifests.find((m) => state.prior && m.id === state.prior.id);
    state.ordered = picked ? [picked, ...priorManifests.filter((m) => m !== picked)] : priorManifests;
    const plan = state.protocol ? protocolPlan(current, state.ordered) : defaultPlan(current, state.ordered);
    document.getElementById("protocol-name").textContent = state.protocol ? `Layout: ${state.protocol.name}` : "";
    root.dataset.protocol = state.protocol ? state.protocol.id : "";
    const template = document.getElementById("pane-template");
    for (const { role, study, series, window: preset } of plan) {
      if (!series) continue;
      const el = template.content.firstElementChild.cloneNode(true);
      el.classList.add(role);
      el.dataset.role = role;
      grid.appendChild(el);
      const pane = new Pane(el, role);
      if (preset) pane.window = { ...preset };
      state.panes.push(pane);
      pane.resize();
      pane.setSeries(study, series);
      $("select", el).addEventListener("change", (event) => {
        const next = study.series.find((s) => s.id === event.target.value);
        if (next) { pane.setSeries(study, next); if (state.sync) followPosition(state.panes[0]); drawReferenceLines(); }
      });
    }
    // The priors open at the current slice's position.
    if (state.sync) followPosition(state.panes[0]);
    drawReferenceLines();
    root.dataset.panes = String(state.panes.length);
  }

  // The layout in front of the reader, as their own protocol for studies like this one.
  async function saveLayout() {
    const panes = state.panes.map((pane) => {
      const list = imageSeries(pane.study);
      return {
        study: pane.role,
        prior: pane.role === "prior" ? Math.max(0, state.ordered.indexOf(pane.study)) : 0,
        series: Math.max(0, list.indexOf(pane.series)),
        series_description: pane.series.description || "",
        window: pane.window ? { center: Math.round(pane.window.center), width: Math.round(pane.window.width) } : null,
      };
    });
    const priors = panes.filter((p) => p.study === "prior").map((p) => p.prior + 1);
    const body = {
      name: `My ${[state.facts.modality, state.facts.body_region].filter(Boolean).join(" ") || "studies"} layout`,
      modality: state.facts.modality,
      body_region: state.facts.body_region,
      min_priors: priors.length ? Math.max(...priors) : 0,
      layout: state.layout,
      panes,
    };
    const mine = state.protocol && state.protocol.owner === "user";
    const url = mine ? `${root.dataset.protocols}${state.protocol.id}/` : root.dataset.protocols;
    try {
      state.protocol = await api(url, { method: mine ? "PUT" : "POST", body: JSON.stringify(body) });
      document.getElementById("protocol-name").textContent = `Saved as “${state.protocol.name}”`;
      root.dataset.protocol = state.protocol.id;
    } catch (error) {
      document.getElementById("protocol-name").textContent = "The layout could not be saved.";
    }
  }

  // Priors and the prior's report ------------------------------------------------------

  function renderPriors() {
    const list = document.getElementById("prior-list");
    list.replaceChildren();
    document.getElementById("prior-empty").hidden = state.priors.length > 0;
    state.priors.forEach((prior) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.prior = prior.id;
      button.setAttribute("aria-current", String(state.prior && state.prior.id === prior.id));
      const title = document.createElement("strong");
      title.textContent = `${prior.study_date || "undated"} · ${prior.modalities.join("/")} ${prior.description}`;
      const impression = document.createElement("span");
      impression.className = "impression";
      impression.textContent = prior.reports.length ? prior.reports[0].impression : "No signed report";
      button.append(title, impression);
      if (prior.linked) {
        // The same person's study at another hospital, compared with the patient's consent.
        const hospital = document.createElement("span");
        hospital.className = "hospital";
        hospital.textContent = `from ${prior.hospital}`;
        button.dataset.linked = "true";
        button.append(hospital);
      }
      button.addEventListener("click", () => { state.prior = prior; renderPriors(); renderReport(); arrange(); });
      item.appendChild(button);
      list.appendChild(item);
    });
  }

  function renderReport() {
    const panel = document.getElementById("prior-report");
    panel.replaceChildren();
    const reports = state.prior ? state.prior.reports : [];
    if (!reports.length) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "No signed report.";
      panel.appendChild(empty);
      return;
    }
    const report = reports[0];
    const signed = document.createElement("p");
    signed.textContent = `Signed ${report.signed_at ? report.signed_at.slice(0, 10) : ""} by ${report.signer}`;
    panel.appendChild(signed);
    for (const [title, text] of [["Findings", report.findings], ["Impression", report.impression]]) {
      const heading = document.createElement("h3");
      heading.textContent = title;
      const body = document.createElement("div");
      body.className = `report-${title.toLowerCase()}`;
      body.textContent = text || "—";
      panel.append(heading, body);
    }
  }

  // Controls and start -------------------------------------------------------------------

  function bindControls() {
    document.querySelectorAll(".tool").forEach((b) => b.addEventListener("click", () => {
      state.tool = b.dataset.tool;
      document.querySelectorAll(".tool").forEach((t) => t.setAttribute("aria-pressed", String(t === b)));
    }));
    document.querySelectorAll(".layout").forEach((b) => b.addEventListener("click", () => {
      state.layout = b.dataset.layout;
      state.protocol = null; // the reader's choice replaces the protocol's
      arrange();
    }));
    document.getElementById("save-layout").addEventListener("click", saveLayout);
    const check = (id, key, after) => document.getElementById(id).addEventListener("change", (event) => {
      state[key] = event.target.checked;
      if (after) after();
    });
    check("sync-scroll", "sync", () => { if (state.sync) followPosition(state.panes[0]); });
    check("link-window", "linkWindow");
    check("link-zoom", "linkZoom");
    check("reference-lines", "referenceLines", drawReferenceLines);
    document.getElementById("realign").addEventListener("click", realign);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { state.panes.forEach((p) => p.resize()); drawReferenceLines(); }, 100);
    });
  }

  async function start() {
    try {
      const [current, priors] = await Promise.all([
        manifest(root.dataset.study, root.dataset.manifest),
        api(root.dataset.priors),
      ]);
      state.current = current;
      state.priors = priors.priors;
    } catch (error) {
      root.classList.add("failed");
      root.dataset.error = String(error.message || error);
      return;
    }
    state.prior = state.priors[0] || null;
    try {
      const found = await api(`${root.dataset.protocols}match/?study=${root.dataset.study}&priors=${state.priors.length}`);
      state.facts = { modality: found.modality, body_region: found.body_region };
      if (found.protocol) {
        state.protocol = found.protocol;
        state.layout = found.protocol.layout;
      }
    } catch (error) {
      // No protocol: the default layout.
    }
    bindControls();
    renderPriors();
    renderReport();
    await arrange();
    root.dataset.ready = "true";
  }

  start();
})();
