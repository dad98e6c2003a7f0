// The report editor's priors: each relevant prior with its date and impression,
// and one click to write the comparison sentence into the findings.
(function () {
  "use strict";

  const box = document.getElementById("priors");
  if (!box) return;

  function sentence(prior) {
    const modality = prior.modalities.length ? prior.modalities.join("/") : "the study";
    const what = prior.description ? ` (${prior.description})` : "";
    return `Compared with ${modality} of ${prior.study_date || "an undated study"}${what}.`;
  }

  // At the start of the findings, where a comparison is read first; the
  // editor's own input handler saves it like typing.
  function insert(text) {
    const field = document.querySelector('[data-section="findings"]') || document.querySelector("textarea[data-section]");
    if (!field) return;
    if (field.value.includes(text)) return;
    field.value = field.value ? `${text}\n${field.value}` : text;
    field.dispatchEvent(new Event("input", { bubbles: true }));
    field.focus();
  }

  async function load() {
    const response = await fetch(box.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const { priors } = await response.json();
    const list = document.getElementById("prior-list");
    document.getElementById("prior-empty").hidden = priors.length > 0;
    priors.forEach((prior) => {
      const item = document.createElement("li");
      const title = document.createElement("strong");
      title.textContent = `${prior.study_date || "undated"} · ${prior.modalities.join("/")} ${prior.description}`;
      const impression = document.createElement("p");
      impression.className = "impression";
      impression.textContent = prior.reports.length ? prior.reports[0].impression || "—" : "No signed report.";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary insert-comparison";
      button.textContent = "Insert comparison";
      button.addEventListener("click", () => insert(sentence(prior)));
      item.append(title, impression, button);
      list.appendChild(item);
    });
    box.dataset.ready = "true";
  }

  load().catch(() => {});
})();
