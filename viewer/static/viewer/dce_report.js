// Report editor: the DCE-MRI regions drawn on the study, each with a button
// that inserts its values and curve type into the findings (the editor's
// autosave takes it from there, as with typing).
(() => {
  "use strict";

  const box = document.getElementById("dce-report");
  const findings = document.getElementById("findings");
  if (!box || !findings) return;

  const number = (value, digits = 3) => (value === null || value === undefined ? "—" : Number(value).toPrecision(digits));

  function sentence(row) {
    const r = row.results;
    const e = r.enhancement;
    const parts = [];
    parts.push(e.curve_type ? `curve type ${e.curve_type} (${e.curve_type_label})` : "no enhancement");
    if (e.onset_s !== null) parts.push(`onset ${number(e.onset_s)} s`);
    parts.push(`maximum enhancement ${number(e.max_enhancement_ratio_percent)} %`);
    if (e.time_to_peak_s !== null) parts.push(`time to peak ${number(e.time_to_peak_s)} s`);
    if (e.initial_slope_percent_per_min !== null) parts.push(`initial slope ${number(e.initial_slope_percent_per_min)} %/min`);
    if (e.washout_rate_percent_per_min !== null) parts.push(`wash-out ${number(e.washout_rate_percent_per_min)} %/min`);
    if (e.signal_enhancement_ratio !== null) parts.push(`SER ${number(e.signal_enhancement_ratio)}`);
    if (e.iauc60 !== null) parts.push(`iAUC60 ${number(e.iauc60)} ${r.concentration_mM ? "mM·s" : "s"}`);
    if (r.fit) {
      parts.push(`Tofts Ktrans ${number(r.fit.ktrans_per_min)} /min, ve ${number(r.fit.ve)}, kep ${number(r.fit.kep_per_min)} /min`);
    }
    return `DCE-MRI, ${row.label || "region"} (slice ${row.region.slice + 1}, ${r.pixels} pixels): ${parts.join("; ")}.`;
  }

  function insert(text) {
    const current = findings.value;
    findings.value = current ? `${current.replace(/\s+$/, "")}\n${text}` : text;
    findings.dispatchEvent(new Event("input", { bubbles: true }));
  }

  async function load() {
    const response = await fetch(box.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const rows = (await response.json()).results || [];
    box.replaceChildren();
    if (!rows.length) {
      box.textContent = "No region analysed yet (DCE in the viewer).";
      return;
    }
    rows.forEach((row) => {
      const p = document.createElement("p");
      const text = sentence(row);
      const label = document.createElement("span");
      label.textContent = text;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary dce-insert";
      button.textContent = "Insert into findings";
      button.addEventListener("click", () => insert(text));
      p.append(label, " ", button);
      box.append(p);
    });
  }

  load().catch(() => {});
})();
