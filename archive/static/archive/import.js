// Import from media: send each dropped or chosen file to the archive, one row per file with its
// progress and result, then a summary. A disc's DICOMDIR is read first and only the files it
// lists are sent (discs also carry viewers and documents).
(() => {
  const form = document.getElementById("import-form");
  if (!form) return;
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  const table = document.getElementById("import-table");
  const tbody = table.querySelector("tbody");
  const summary = document.getElementById("import-summary");
  const PARALLEL = 1; // one upload at a time: the server stores them one after another anyway

  const newBatch = () =>
    window.crypto && crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;

  const humanSize = (bytes) =>
    bytes >= 1048576 ? `${(bytes / 1048576).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1024))} KB`;

  const normalise = (path) => path.replace(/\\/g, "/").replace(/;1$/, "").toUpperCase();

  function addRow(path, size) {
    const row = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = path;
    const sizeCell = document.createElement("td");
    sizeCell.textContent = size === null ? "" : humanSize(size);
    const result = document.createElement("td");
    result.className = "waiting";
    result.textContent = "waiting";
    row.append(name, sizeCell, result);
    tbody.append(row);
    return result;
  }

  function show(cell, status, text) {
    cell.className = status;
    cell.textContent = text;
    cell.dataset.status = status;
  }

  // Files from a drop, folders included (recursively).
  async function readEntry(entry, prefix, out) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: prefix + file.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await readEntry(child, `${prefix}${entry.name}/`, out);
      }
    }
  }

  async function fromDrop(dataTransfer) {
    const out = [];
    const entries = Array.from(dataTransfer.items || [])
      .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
      .filter(Boolean);
    if (entries.length) {
      for (const entry of entries) await readEntry(entry, "", out);
    } else {
      for (const file of dataTransfer.files) out.push({ file, path: file.name });
    }
    return out;
  }

  const fromInput = (input) => Array.from(input.files).map((file) => ({ file, path: file.webkitRelativePath || file.name }));

  function post(url, file, batch, onProgress) {
    return new Promise((resolve) => {
      const body = new FormData();
      body.append("file", file, file.name);
      body.append("batch", batch);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRFToken", csrf);
      xhr.responseType = "json";
      if (onProgress) xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded / e.total));
      xhr.addEventListener("load", () => {
        const answer = xhr.response || {};
        if (xhr.status >= 500 || (!answer.status && !answer.files)) {
          resolve({ status: "refused", reason: `the server answered ${xhr.status}` });
        } else resolve(answer);
      });
      xhr.addEventListener("error", () => resolve({ status: "refused", reason: "the connection failed; try again" }));
      xhr.send(body);
    });
  }

  async function plan(items, batch) {
    const directory = items.find((item) => item.file.name.toUpperCase() === "DICOMDIR");
    if (!directory) return { send: items, notes: [] };
    const answer = await post(form.dataset.dicomdirUrl, directory.file, batch, null);
    if (!answer.files) {
      return { send: items.filter((i) => i !== directory), notes: [[directory, "refused", answer.error || "unreadable DICOMDIR"]] };
    }
    const prefix = directory.path.slice(0, directory.path.length - directory.file.name.length);
    const listed = new Map(answer.files.map((f) => [normalise(prefix + f), f]));
    const send = [];
    const notes = [[directory, "skipped", `disc directory: ${answer.files.length} files of ${answer.studies} studies listed`]];
    const seen = new Set();
    for (const item of items) {
      if (item === directory) continue;
      const key = normalise(item.path);
      if (listed.has(key)) {
        send.push(item);
        seen.add(key);
      } else notes.push([item, "skipped", "not an image listed in the DICOMDIR"]);
    }
    const missing = [...listed.keys()].filter((key) => !seen.has(key));
    return { send, notes, missing: missing.map((key) => prefix + listed.get(key)) };
  }

  async function run(items) {
    if (!items.length) return;
    const batch = newBatch();
    table.hidden = false;
    summary.hidden = true;
    summary.dataset.done = "false";
    const totals = { stored: 0, duplicate: 0, refused: 0, skipped: 0, missing: 0 };
    const studies = new Map();
    const reasons = new Map();
    const { send, notes, missing = [] } = await plan(items, batch);
    for (const [item, status, text] of notes) {
      show(addRow(item.path, item.file.size), status, `${status}: ${text}`);
      totals[status] += 1;
      if (status === "refused") reasons.set(text, (reasons.get(text) || 0) + 1);
    }
    for (const path of missing) {
      show(addRow(path, null), "missing", "missing: listed in the DICOMDIR but not found");
      totals.missing += 1;
    }
    const queue = send.map((item) => ({ item, cell: addRow(item.path, item.file.size) }));
    const worker = async () => {
      while (queue.length) {
        const { item, cell } = queue.shift();
        const bar = document.createElement("progress");
        bar.max = 1;
        bar.value = 0;
        cell.textContent = "";
        cell.append(bar);
        const answer = await post(form.dataset.uploadUrl, item.file, batch, (fraction) => (bar.value = fraction));
        const status = ["stored", "duplicate"].includes(answer.status) ? answer.status : "refused";
        totals[status] += 1;
        if (status === "refused") {
          show(cell, status, `refused: ${answer.reason}`);
          reasons.set(answer.reason, (reasons.get(answer.reason) || 0) + 1);
        } else {
          show(cell, status, status === "stored" ? "stored" : "duplicate: already archived, identical");
          const label = [answer.patient_display_name || answer.patient_name, answer.patient_id && `(${answer.patient_id})`, answer.study_description]
            .filter(Boolean)
            .join(" ");
          const known = studies.get(answer.study) || { label, count: 0 };
          known.count += 1;
          studies.set(answer.study, known);
        }
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
    document.getElementById("import-totals").textContent =
      `${totals.stored} stored, ${totals.duplicate} duplicates, ${totals.refused} refused, ` +
      `${totals.skipped} skipped, ${totals.missing} missing.`;
    const studyList = document.getElementById("import-studies");
    studyList.replaceChildren(
      ...[...studies.values()].map((s) => Object.assign(document.createElement("li"), { textContent: `${s.label}: ${s.count} files` })),
    );
    const reasonList = document.getElementById("import-reasons");
    reasonList.replaceChildren(
      ...[...reasons.entries()].map(([r, n]) => Object.assign(document.createElement("li"), { textContent: `${n} × ${r}` })),
    );
    summary.hidden = false;
    summary.dataset.done = "true";
  }

  const zone = document.getElementById("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    run(await fromDrop(event.dataTransfer));
  });
  for (const id of ["import-files", "import-folder"]) {
    const input = document.getElementById(id);
    input.addEventListener("change", () => {
      run(fromInput(input));
      input.value = "";
    });
  }
})();
