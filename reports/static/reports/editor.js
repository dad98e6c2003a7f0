// The report editor: autosave that never loses typing, templates and macros, key images, the sign dialog.
//
// Every change is kept in this browser (localStorage) at once and sent to the
// server a moment later as a new draft revision. A closed tab reopens the
// server's latest revision; typing the server never received (a dropped link)
// is restored from the browser and sent again.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("report-config").textContent);
  const templates = JSON.parse(document.getElementById("report-templates").textContent);
  const csrf = document.querySelector("input[name=csrfmiddlewaretoken]").value;
  const storageKey = `report-draft:${config.id}`;
  const fields = Array.from(document.querySelectorAll("[data-section]"));
  const status = document.getElementById("save-status");
  let revision = config.revision;
  let keyImages = (config.draft.key_images || []).slice();
  let timer = null;
  let saving = null;
  let dirty = false;
  let offline = false;

  function content() {
    const out = Object.assign({}, config.draft);
    fields.forEach((f) => { out[f.dataset.section] = f.value; });
    out.key_images = keyImages;
    return out;
  }

  function fill(draft) {
    fields.forEach((f) => { f.value = draft[f.dataset.section] || ""; });
    keyImages = (draft.key_images || []).slice();
  }

  function setStatus(text, offline) {
    status.textContent = text;
    status.classList.toggle("offline", Boolean(offline));
  }

  function remember() {
    try {
      localStorage.setItem(storageKey, JSON.stringify({ revision, content: content(), at: Date.now() }));
    } catch (error) { /* storage full or disabled: the server copy still follows */ }
  }

  function changed() {
    dirty = true;
    remember();
    setStatus("Editing…");
    clearTimeout(timer);
    timer = setTimeout(save, 800);
  }

  async function request(method, url, body, keepalive) {
    return fetch(url, {
      method,
      keepalive: Boolean(keepalive),
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf, Accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  async function save() {
    if (saving) { await saving; }
    if (!dirty) return true;
    const sent = content();
    const sentText = JSON.stringify(sent);
    saving = (async () => {
      try {
        const response = await request("PUT", config.urls.draft, { content: sent, base_revision: revision });
        const body = await response.json();
        if (response.status === 409 && body.code === "conflict") {
          // Saved elsewhere meanwhile: that revision stays in the history; ours goes on top of it.
          revision = body.draft_revision;
          setStatus("Another tab saved this draft; your text is saved over it (the other stays in the history).");
          return false;
        }
        if (!response.ok) {
          setStatus(body.detail || "Not saved.", true);
          dirty = false;
          return false;
        }
        revision = body.draft_revision;
        if (JSON.stringify(content()) === sentText) {
          dirty = false;
          localStorage.removeItem(storageKey);
        }
        setStatus(`Saved (revision ${revision}) at ${window.pacsTime(new Date(), { seconds: true })}.`);
        return true;
      } catch (error) {
        setStatus("Offline — your typing is kept in this browser and sent when the link is back.", true);
        offline = true;
        return false;
      } finally {
        saving = null;
      }
    })();
    const ok = await saving;
    if (dirty) {
      clearTimeout(timer);
      timer = setTimeout(save, ok ? 300 : offline ? 5000 : 500);
    }
    offline = false;
    return ok;
  }

  // Templates and macros ---------------------------------------------------------
  const picker = document.getElementById("template");
  function showMacros() {
    const box = document.getElementById("macros");
    if (!box) return;
    box.replaceChildren();
    const chosen = templates.find((t) => t.id === (picker && picker.value));
    (chosen ? chosen.macros : []).forEach((macro) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "secondary";
      button.textContent = `${macro.name} → ${macro.section}`;
      button.addEventListener("click", () => {
        const field = document.querySelector(`[data-section="${macro.section}"]`);
        if (!field) return;
        field.value = field.value ? `${field.value}\n${macro.text}` : macro.text;
        changed();
      });
      box.appendChild(button);
    });
  }
  if (picker) {
    picker.addEventListener("change", showMacros);
    document.getElementById("apply-template").addEventListener("click", () => {
      const chosen = templates.find((t) => t.id === picker.value);
      if (!chosen) return;
      fields.forEach((f) => {
        const text = (chosen.sections || {})[f.dataset.section];
        if (text && !f.value.trim()) f.value = text;
      });
      changed();
    });
    showMacros();
  }

  // Key images -------------------------------------------------------------------------
  function figure(src, caption) {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = src;
    img.alt = caption;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    cap.textContent = caption;
    fig.append(img, cap);
    return fig;
  }

  let marked = [];
  let instances = {};
  let labels = {}; // instance id -> {label: "Series 2 · Image 14", frames}

  function imageLabel(instance, frame) {
    const image = labels[instance];
    if (!image) return "";
    return image.frames > 1 ? `${image.label} · Frame ${frame}` : image.label;
  }

  function caption(label, note) {
    return [label, note].filter(Boolean).join(" — ");
  }

  function isChosen(instance, frame) {
    return keyImages.some((k) => k.instance === instance && Number(k.frame) === Number(frame));
  }

  function drawChosen() {
    const box = document.getElementById("chosen");
    box.replaceChildren();
    if (!keyImages.length) {
      box.textContent = "None yet.";
      return;
    }
    keyImages.forEach((k) => {
      const src = instances[k.instance] ? instances[k.instance].replace("{frame}", k.frame) : "";
      const fig = figure(src, caption(imageLabel(k.instance, k.frame), k.note));
      fig.dataset.instance = k.instance;
      fig.classList.add("chosen-key-image");
      box.appendChild(fig);
    });
  }

  function drawMarked() {
    const box = document.getElementById("marked");
    box.replaceChildren();
    if (!marked.length) box.textContent = "No key image is marked on this study yet.";
    marked.forEach((k) => {
      const fig = figure(`${k.rendered}?viewport=120,120`, `${caption(k.label, k.note)} (${k.user})`);
      const label = document.createElement("label");
      const box2 = document.createElement("input");
      box2.type = "checkbox";
      box2.className = "include-key-image";
      box2.checked = isChosen(k.instance, k.frame);
      box2.addEventListener("change", () => {
        keyImages = keyImages.filter((c) => !(c.instance === k.instance && Number(c.frame) === Number(k.frame)));
        if (box2.checked) keyImages.push({ instance: k.instance, frame: k.frame, note: k.note || "" });
        drawChosen();
        changed();
      });
      label.append(box2, " in the report");
      fig.appendChild(label);
      box.appendChild(fig);
    });
  }

  async function loadMarked() {
    const response = await fetch(config.urls.key_images, { credentials: "same-origin" });
    if (response.ok) {
      marked = (await response.json()).results;
      drawMarked();
    }
  }

  async function mark(instance, note) {
    const response = await request("POST", config.urls.key_images, { instance, frame: 1, note });
    if (!response.ok) return;
    const row = await response.json();
    if (!isChosen(row.instance, row.frame)) {
      keyImages.push({ instance: row.instance, frame: row.frame, note: row.note || "" });
      changed();
    }
    await loadMarked();
    drawChosen();
  }

  async function loadImages() {
    const response = await fetch(config.urls.manifest, { credentials: "same-origin" });
    if (!response.ok) return;
    const manifest = await response.json();
    const box = document.getElementById("images");
    box.replaceChildren();
    manifest.series.forEach((series) => {
      series.instances.forEach((item) => {
        const base = `/dicomweb/studies/${manifest.study_instance_uid}/series/${series.uid}/instances/${item.sop}/frames/{frame}/rendered`;
        instances[item.id] = `${base}?viewport=120,120`;
        labels[item.id] = { label: item.label, frames: item.frames };
        const fig = figure(instances[item.id].replace("{frame}", 1), item.label);
        const button = document.createElement("button");
        button.type = "button";
        button.className = "secondary mark-key-image";
        button.textContent = "Mark as key image";
        button.addEventListener("click", () => mark(item.id, `${series.description || series.modality} image ${item.number || ""}`.trim()));
        fig.appendChild(button);
        box.appendChild(fig);
      });
    });
    drawChosen();
  }

  document.getElementById("refresh-keys").addEventListener("click", loadMarked);

  // Signing ----------------------------------------------------------------------------
  const dialog = document.getElementById("sign-dialog");
  document.getElementById("sign-open").addEventListener("click", () => {
    document.getElementById("sign-error").textContent = "";
    dialog.showModal();
  });
  document.getElementById("sign-cancel").addEventListener("click", () => dialog.close());
  document.getElementById("sign-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("sign-error");
    error.textContent = "";
    for (let attempt = 0; attempt < 3 && dirty; attempt += 1) {
      clearTimeout(timer);
      await save();
    }
    clearTimeout(timer);
    if (dirty) {
      error.textContent = "The draft could not be saved; nothing was signed.";
      return;
    }
    const preliminary = document.getElementById("sign-preliminary");
    const body = {
      password: document.getElementById("sign-password").value,
      base_revision: revision,
      preliminary: Boolean(preliminary && preliminary.checked),
      critical: document.getElementById("sign-critical").checked,
      critical_note: document.getElementById("sign-critical-note").value,
      notify: document.getElementById("sign-notify").value.trim(),
    };
    const response = await request("POST", config.urls.sign, body);
    if (response.status === 201) {
      localStorage.removeItem(storageKey);
      window.location.assign(config.urls.page);
      return;
    }
    let detail = "Not signed.";
    try {
      const answer = await response.json();
      detail = answer.detail || Object.values(answer).flat().join(" ") || detail;
    } catch (e) { /* not JSON */ }
    error.textContent = detail;
  });

  // Start: the server's draft, then any typing this browser kept that the server never got.
  fill(config.draft);
  try {
    const kept = JSON.parse(localStorage.getItem(storageKey) || "null");
    if (kept && JSON.stringify(kept.content) !== JSON.stringify(content())) {
      fill(kept.content);
      setStatus("Recovered typing that had not reached the server; saving it now.");
      dirty = true;
      timer = setTimeout(save, 10);
    }
  } catch (error) { localStorage.removeItem(storageKey); }
  fields.forEach((f) => f.addEventListener("input", changed));
  window.addEventListener("beforeunload", () => {
    if (!dirty) return;
    // A last attempt that outlives the page; the browser copy remains either way.
    request("PUT", config.urls.draft, { content: content(), base_revision: revision }, true).catch(() => {});
  });
  drawChosen();
  loadImages();
  loadMarked();
})();
