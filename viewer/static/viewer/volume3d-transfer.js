// The transfer function editor of the 3D viewer: the opacity curve over HU as
// handles to drag (HU left–right, opacity up–down), a colour for each handle.
// Double-click the curve's area to add a point, double-click a point to remove
// it. Each change goes to the server as a "transfer" gesture; the server answers
// with the function it now renders, which redraws the editor (also after a preset).
(() => {
  "use strict";
  const api = window.pacsVolume;
  const svg = document.getElementById("v3d-tf");
  const colourInput = document.getElementById("v3d-tf-colour");
  const readout = document.getElementById("v3d-tf-point");
  if (!api || !svg) return;
  const NS = "http://www.w3.org/2000/svg";
  const W = 300;
  const H = 120;
  const PAD = 8;
  let transfer = null; // { colour: [[hu, r, g, b]...], opacity: [[hu, a]...] }
  let range = [-1000, 3000];
  let selected = -1;
  let dragging = -1;

  const x = (hu) => PAD + ((hu - range[0]) / (range[1] - range[0])) * (W - 2 * PAD);
  const y = (a) => H - PAD - a * (H - 2 * PAD);
  const hu = (px) => range[0] + ((px - PAD) / (W - 2 * PAD)) * (range[1] - range[0]);
  const alpha = (py) => Math.min(1, Math.max(0, (H - PAD - py) / (H - 2 * PAD)));

  function colourAt(value) {
    const points = transfer.colour;
    if (value <= points[0][0]) return points[0].slice(1);
    for (let i = 1; i < points.length; i += 1) {
      if (value <= points[i][0]) {
        const [h0, ...c0] = points[i - 1];
        const [h1, ...c1] = points[i];
        const t = (value - h0) / (h1 - h0 || 1);
        return c0.map((c, k) => c + (c1[k] - c) * t);
      }
    }
    return points[points.length - 1].slice(1);
  }
  const hex = (rgb) => "#" + rgb.map((c) => Math.round(c * 255).toString(16).padStart(2, "0")).join("");

  function draw() {
    svg.innerHTML = "";
    if (!transfer) return;
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", transfer.opacity.map(([h, a]) => `${x(h)},${y(a)}`).join(" "));
    line.setAttribute("class", "v3d-tf-curve");
    svg.appendChild(line);
    transfer.opacity.forEach(([h, a], index) => {
      const dot = document.createElementNS(NS, "circle");
      dot.setAttribute("cx", x(h));
      dot.setAttribute("cy", y(a));
      dot.setAttribute("r", index === selected ? 6 : 5);
      dot.setAttribute("fill", hex(colourAt(h)));
      dot.setAttribute("class", "v3d-tf-point" + (index === selected ? " selected" : ""));
      dot.dataset.index = String(index);
      svg.appendChild(dot);
    });
    if (selected >= 0 && transfer.opacity[selected]) {
      const [h, a] = transfer.opacity[selected];
      readout.textContent = `${Math.round(h)} HU · opacity ${a.toFixed(2)}`;
      colourInput.value = hex(colourAt(h));
      colourInput.disabled = false;
    } else {
      readout.textContent = "Select a point";
      colourInput.disabled = true;
    }
  }

  function show(next) {
    transfer = { colour: next.colour.map((p) => p.slice()), opacity: next.opacity.map((p) => p.slice()) };
    const values = [...transfer.opacity.map((p) => p[0]), ...transfer.colour.map((p) => p[0])];
    const low = Math.min(...values);
    const high = Math.max(...values);
    const margin = Math.max(100, (high - low) * 0.15);
    range = [Math.max(-5000, low - margin), Math.min(40000, high + margin)];
    if (selected >= transfer.opacity.length) selected = -1;
    draw();
  }

  function sendOpacity() {
    transfer.opacity.sort((a, b) => a[0] - b[0]);
    api.sendNow({ type: "transfer", changes: { opacity: transfer.opacity } });
  }

  function local(event) {
    const box = svg.getBoundingClientRect();
    return [((event.clientX - box.left) / box.width) * W, ((event.clientY - box.top) / box.height) * H];
  }

  svg.addEventListener("pointerdown", (event) => {
    const index = event.target.dataset ? Number(event.target.dataset.index) : NaN;
    if (Number.isNaN(index)) return;
    selected = dragging = index;
    svg.setPointerCapture(event.pointerId);
    draw();
  });
  svg.addEventListener("pointermove", (event) => {
    if (dragging < 0 || !transfer) return;
    const [px, py] = local(event);
    transfer.opacity[dragging] = [Math.round(hu(px)), Number(alpha(py).toFixed(3))];
    draw();
  });
  svg.addEventListener("pointerup", () => {
    if (dragging < 0) return;
    const moved = transfer.opacity[dragging];
    sendOpacity();
    selected = transfer.opacity.indexOf(moved);
    dragging = -1;
    draw();
  });
  svg.addEventListener("dblclick", (event) => {
    if (!transfer) return;
    const index = event.target.dataset ? Number(event.target.dataset.index) : NaN;
    if (!Number.isNaN(index)) {
      if (transfer.opacity.length <= 2) return;
      transfer.opacity.splice(index, 1);
      selected = -1;
    } else {
      const [px, py] = local(event);
      transfer.opacity.push([Math.round(hu(px)), Number(alpha(py).toFixed(3))]);
      selected = transfer.opacity.length - 1;
    }
    const chosen = transfer.opacity[selected];
    sendOpacity();
    selected = chosen ? transfer.opacity.indexOf(chosen) : -1;
    draw();
  });
  colourInput.addEventListener("change", () => {
    if (!transfer || selected < 0) return;
    const at = transfer.opacity[selected][0];
    const rgb = [1, 3, 5].map((i) => parseInt(colourInput.value.slice(i, i + 2), 16) / 255);
    const colour = transfer.colour.filter((p) => p[0] !== at);
    colour.push([at, ...rgb]);
    colour.sort((a, b) => a[0] - b[0]);
    transfer.colour = colour;
    api.sendNow({ type: "transfer", changes: { colour } });
    draw();
  });

  api.listeners.push((message) => {
    if (message.type === "ready") show(message.parameters.transfer);
    else if (message.type === "transfer") show(message.transfer);
  });
  api.transferEditor = { get transfer() { return transfer; } };
})();
