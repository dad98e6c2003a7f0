// DCE-MRI analysis page: draw a region on the dynamic series, plot its curve
// with the arterial input, start voxel-wise maps, follow their progress and
// overlay them with a colour bar and the value under the cursor.
// No framework, no inline code (CSP).
(() => {
  "use strict";

  const root = document.getElementById("dce");
  const data = document.getElementById("dce-acquisitions");
  if (!root || !data) return;
  const acquisitions = JSON.parse(data.textContent);
  const $ = (id) => document.getElementById(id);
  const img = $("dce-img");
  const canvas = $("dce-overlay");
  const ctx = canvas.getContext("2d");
  const POLL_MS = 400;

  const state = { acquisition: 0, slice: 0, phase: 0, points: [], closed: false, job: null, map: null, region: null, aif: null };
  window.pacsDce = { state };

  async function api(url, options = {}) {
    const headers = { Accept: "application/json" };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    if (options.method && options.method !== "GET") headers["X-CSRFToken"] = root.dataset.csrf;
    const response = await fetch(url, {
      method: options.method || "GET",
      credentials: "same-origin",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(Object.values(body).flat().join(" ") || response.statusText);
    return body;
  }

  function current() {
    return acquisitions[state.acquisition];
  }

  function showFrame() {
    const a = current();
    $("dce-slice").max = String(a.frames[0].length - 1);
    $("dce-phase").max = String(a.frames.length - 1);
    $("dce-slice-out").textContent = String(state.slice + 1);
    $("dce-phase-out").textContent = `${a.times[state.phase]} s`;
    img.src = a.frames[state.phase][state.slice];
  }

  // Colour map (dark blue → cyan → yellow → red) for the overlay and its bar.
  function colour(x) {
    const t = Math.min(Math.max(x, 0), 1);
    const r = Math.round(255 * Math.min(Math.max(1.5 - Math.abs(4 * t - 3), 0), 1));
    const g = Math.round(255 * Math.min(Math.max(1.5 - Math.abs(4 * t - 2), 0), 1));
    const b = Math.round(255 * Math.min(Math.max(1.5 - Math.abs(4 * t - 1), 0), 1));
    return [r, g, b];
  }

  function draw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const map = state.map;
    if (map && map.slice === state.slice && map.columns === canvas.width && map.rows === canvas.height) {
      const image = ctx.createImageData(map.columns, map.rows);
      const span = map.max - map.min || 1;
      map.values.forEach((v, i) => {
        if (v === 0) return; // outside the mask
        const [r, g, b] = colour((v - map.min) / span);
        image.data.set([r, g, b, 170], i * 4);
      });
      ctx.putImageData(image, 0, 0);
    }
    if (state.points.length) {
      ctx.strokeStyle = "#ffeb3b";
      ctx.lineWidth = Math.max(canvas.width / 256, 0.5);
      ctx.beginPath();
      state.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (state.closed) ctx.closePath();
      ctx.stroke();
    }
  }

  function pixelAt(event) {
    const box = canvas.getBoundingClientRect();
    return [
      ((event.clientX - box.left) * canvas.width) / box.width,
      ((event.clientY - box.top) * canvas.height) / box.height,
    ];
  }

  function updateButtons() {
    $("dce-close").disabled = state.closed || state.points.length < 3;
    $("dce-analyse").disabled = !state.closed;
    $("dce-artery").disabled = !state.closed;
    $("dce-key-image").disabled = !state.region;
    $("dce-start").disabled = !state.closed || (state.job && ["queued", "running"].includes(state.job.state));
  }

  function region() {
    return { slice: state.slice, polygon: state.points.map(([x, y]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10]) };
  }

  // The arterial input of the next curve and maps: Parker's, or a region drawn on an artery.
  function aifSpec() {
    return state.aif ? { region: state.aif } : { population: "parker" };
  }

  function useArtery() {
    state.aif = region();
    $("dce-aif-source").textContent =
      `Arterial input: region drawn on slice ${state.aif.slice + 1} (${state.aif.polygon.length} points)`;
    $("dce-population").hidden = false;
    state.points = [];
    state.closed = false;
    updateButtons();
    draw();
  }

  function usePopulation() {
    state.aif = null;
    $("dce-aif-source").textContent = "Arterial input: Parker population AIF";
    $("dce-population").hidden = true;
  }

  async function saveKeyImage() {
    if (!state.region) return;
    $("dce-key-image-state").textContent = "Saving…";
    try {
      await api(`${root.dataset.regions}${state.region.id}/key-image/`, { method: "POST" });
      $("dce-key-image-state").textContent = "Saved as a key image of the study";
    } catch (error) {
      $("dce-key-image-state").textContent = `Not saved: ${error.message}`;
    }
  }

  function polyline(times, values, scale, tMax, vMax, cls) {
    const points = times
      .map((t, i) => `${(30 + (t / tMax) * 320).toFixed(1)},${(200 - ((values[i] * scale) / vMax) * 180).toFixed(1)}`)
      .join(" ");
    return `<polyline class="${cls}" fill="none" stroke-width="2" points="${points}"/>`;
  }

  function plot(results) {
    const svg = $("dce-curve");
    const times = results.times_s;
    const tissue = results.concentration_mM || results.signal;
    const aif = results.aif_mM || [];
    const tMax = times[times.length - 1] || 1;
    const vMax = Math.max(...tissue, ...aif.map((v) => v / 10), 1e-6);
    svg.innerHTML =
      `<line x1="30" y1="200" x2="350" y2="200" stroke="#889"/><line x1="30" y1="20" x2="30" y2="200" stroke="#889"/>` +
      `<text x="300" y="215" font-size="10">${tMax.toFixed(0)} s</text>` +
      `<text x="2" y="28" font-size="10">${vMax.toFixed(2)}</text>` +
      (aif.length ? polyline(times, aif, 0.1, tMax, vMax, "aif-line") : "") +
      polyline(times, tissue, 1, tMax, vMax, "tissue-line");
    svg.querySelectorAll(".aif-line").forEach((l) => l.setAttribute("stroke", "#2c6bd6"));
    svg.querySelectorAll(".tissue-line").forEach((l) => l.setAttribute("stroke", "#c0392b"));
  }

  function describe(results) {
    const e = results.enhancement;
    $("dce-curve-type").textContent = e.curve_type
      ? `Curve type ${e.curve_type} (${e.curve_type_label})`
      : "No enhancement";
    const rows = [
      ["Onset", e.onset_s, "s"],
      ["Initial slope", e.initial_slope_percent_per_min, "%/min"],
      ["Max enhancement", e.max_enhancement_ratio_percent, "%"],
      ["Time to peak", e.time_to_peak_s, "s"],
      ["Wash-out rate", e.washout_rate_percent_per_min, "%/min"],
      ["SER", e.signal_enhancement_ratio, ""],
      ["iAUC60", e.iauc60, results.concentration_mM ? "mM·s" : "s"],
    ];
    if (results.fit) {
      rows.push(["Ktrans", results.fit.ktrans_per_min, "/min"], ["ve", results.fit.ve, ""], ["kep", results.fit.kep_per_min, "/min"]);
    }
    const dl = $("dce-values");
    dl.replaceChildren();
    rows.forEach(([name, value, unit]) => {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value === null || value === undefined ? "—" : `${Number(value).toPrecision(3)} ${unit}`.trim();
      dl.append(dt, dd);
    });
  }

  async function analyse() {
    $("dce-curve-type").textContent = "Analysing…";
    try {
      const row = await api(root.dataset.regions, {
        method: "POST",
        body: { study: root.dataset.study, series: current().series, region: region(), label: "Region", aif: aifSpec() },
      });
      state.region = row;
      $("dce-key-image-state").textContent = "";
      updateButtons();
      plot(row.results);
      describe(row.results);
    } catch (error) {
      $("dce-curve-type").textContent = `Not analysed: ${error.message}`;
    }
  }

  function showJob(job) {
    state.job = job;
    const progress = $("dce-progress");
    progress.hidden = false;
    progress.value = job.progress;
    $("dce-job-state").textContent =
      job.state === "failed" ? `Maps failed: ${job.error}` : `Maps ${job.state} (${Math.round(job.progress * 100)} %)`;
    $("dce-cancel").hidden = !["queued", "running"].includes(job.state);
    updateButtons();
  }

  async function poll(id) {
    const job = await api(`${root.dataset.jobs}${id}/`);
    showJob(job);
    if (["queued", "running"].includes(job.state)) {
      setTimeout(() => poll(id).catch(() => {}), POLL_MS);
    } else if (job.state === "done") {
      offerMaps(job);
    }
  }

  async function startMaps() {
    try {
      const job = await api(root.dataset.jobs, {
        method: "POST",
        body: { study: root.dataset.study, series: current().series, mask: [region()], model: $("dce-model").value, aif: aifSpec() },
      });
      showJob(job);
      await poll(job.id);
    } catch (error) {
      $("dce-job-state").textContent = `Not started: ${error.message}`;
    }
  }

  async function cancelMaps() {
    if (!state.job) return;
    showJob(await api(`${root.dataset.jobs}${state.job.id}/cancel/`, { method: "POST" }));
  }

  function offerMaps(job) {
    const select = $("dce-map");
    select.replaceChildren();
    // Ktrans first: the map a reader looks at first (the stored results keep no order).
    const order = ["ktrans", "ve", "kep", "vp", "iauc60"];
    const entries = Object.entries(job.results.maps).sort(([a], [b]) => order.indexOf(a) - order.indexOf(b));
    entries.forEach(([name, info]) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = `${info.label} (${info.unit})`;
      select.append(option);
    });
    $("dce-maps").hidden = false;
    loadMap().catch(() => {});
  }

  async function loadMap() {
    if (!state.job || state.job.state !== "done") return;
    const name = $("dce-map").value;
    const map = await api(`${root.dataset.jobs}${state.job.id}/maps/${name}/${state.slice}/`);
    map.slice = state.slice;
    const inside = map.values.filter((v) => v !== 0);
    map.min = inside.length ? Math.min(...inside) : map.min;
    map.max = inside.length ? Math.max(...inside) : map.max;
    state.map = map;
    const bar = $("dce-colorbar").getContext("2d");
    for (let x = 0; x < 160; x += 1) {
      const [r, g, b] = colour(x / 159);
      bar.fillStyle = `rgb(${r},${g},${b})`;
      bar.fillRect(x, 0, 1, 12);
    }
    $("dce-colorbar-range").textContent = `${map.min.toPrecision(3)} – ${map.max.toPrecision(3)} ${map.unit}`;
    draw();
  }

  function valueUnderCursor(event) {
    const map = state.map;
    if (!map || map.slice !== state.slice) return;
    const [x, y] = pixelAt(event).map(Math.floor);
    if (x < 0 || y < 0 || x >= map.columns || y >= map.rows) return;
    const v = map.values[y * map.columns + x];
    $("dce-value").textContent = `${map.label} ${Number(v).toPrecision(3)} ${map.unit} at (${x}, ${y})`;
  }

  function bind() {
    img.addEventListener("load", () => {
      if (canvas.width !== img.naturalWidth || canvas.height !== img.naturalHeight) {
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
      }
      draw();
    });
    canvas.addEventListener("click", (event) => {
      if (state.closed) return;
      state.points.push(pixelAt(event));
      updateButtons();
      draw();
    });
    canvas.addEventListener("dblclick", () => {
      if (state.points.length >= 3) {
        state.closed = true;
        updateButtons();
        draw();
      }
    });
    canvas.addEventListener("mousemove", valueUnderCursor);
    $("dce-close").addEventListener("click", () => {
      state.closed = true;
      updateButtons();
      draw();
    });
    $("dce-clear").addEventListener("click", () => {
      state.points = [];
      state.closed = false;
      updateButtons();
      draw();
    });
    $("dce-analyse").addEventListener("click", analyse);
    $("dce-artery").addEventListener("click", useArtery);
    $("dce-population").addEventListener("click", usePopulation);
    $("dce-key-image").addEventListener("click", saveKeyImage);
    $("dce-start").addEventListener("click", startMaps);
    $("dce-cancel").addEventListener("click", () => cancelMaps().catch(() => {}));
    $("dce-map").addEventListener("change", () => loadMap().catch(() => {}));
    $("dce-acquisition").addEventListener("change", (event) => {
      state.acquisition = Number(event.target.value);
      state.slice = state.phase = 0;
      showFrame();
    });
    $("dce-slice").addEventListener("input", (event) => {
      state.slice = Number(event.target.value);
      state.points = [];
      state.closed = false;
      updateButtons();
      showFrame();
      loadMap().catch(() => {});
    });
    $("dce-phase").addEventListener("input", (event) => {
      state.phase = Number(event.target.value);
      showFrame();
    });
  }

  bind();
  // Start on the last time point: the enhancing lesion is easiest to outline there.
  state.phase = current().frames.length - 1;
  $("dce-phase").value = String(state.phase);
  showFrame();
  updateButtons();
})();
