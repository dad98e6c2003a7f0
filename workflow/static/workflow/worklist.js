// The live reading worklist: pushes over /ws/notifications/ keep the list current.
// A task someone else claims (or that is cancelled, escalated or reassigned away)
// is removed at once; new or changed offers redraw the rows from the server, which
// applies the page's filters and sorting.
(function () {
  "use strict";
  const table = document.getElementById("worklist");
  if (!table) return;
  const status = document.getElementById("live-status");
  const rowsUrl = table.dataset.rowsUrl;
  const view = table.dataset.view;
  let refreshTimer = null;
  let backoff = 1000;

  function setStatus(text, ok) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("ok", ok);
  }

  function remaining(due) {
    const seconds = Math.round((new Date(due).getTime() - Date.now()) / 1000);
    const abs = Math.abs(seconds);
    const h = Math.floor(abs / 3600);
    const m = Math.floor((abs % 3600) / 60);
    const s = abs % 60;
    const text = h > 0 ? `${h} h ${String(m).padStart(2, "0")} min` : m > 0 ? `${m} min ${String(s).padStart(2, "0")} s` : `${s} s`;
    return seconds < 0 ? { text: `overdue ${text}`, late: true } : { text, late: false };
  }

  function tick() {
    table.querySelectorAll("td[data-due]").forEach((cell) => {
      const left = remaining(cell.dataset.due);
      cell.textContent = left.text;
      cell.classList.toggle("late", left.late);
    });
  }

  function removeRow(id) {
    const row = table.querySelector(`tr[data-task="${id}"]`);
    if (row) row.remove();
    const body = document.getElementById("worklist-rows");
    if (body && !body.querySelector("tr[data-task]")) scheduleRefresh(0);
  }

  function scheduleRefresh(delay) {
    if (refreshTimer) clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, delay);
  }

  async function refresh() {
    refreshTimer = null;
    const query = window.location.search || `?view=${view}`;
    try {
      const response = await fetch(rowsUrl + query, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const holder = document.createElement("table");
      holder.innerHTML = await response.text();
      const fresh = holder.querySelector("tbody");
      const current = document.getElementById("worklist-rows");
      if (fresh && current) current.replaceWith(fresh);
      tick();
    } catch (error) {
      setStatus("offline — retrying", false);
    }
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws/notifications/`);
    socket.addEventListener("open", () => {
      backoff = 1000;
      setStatus("live", true);
      refresh(); // catch up on anything missed while disconnected
    });
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      const data = message.data || {};
      switch (message.topic) {
        case "workflow.task.withdrawn":
          if (view === "offered") removeRow(data.id);
          break;
        case "workflow.task.offered":
        case "workflow.task.updated":
          if (view === "offered" || view === "claimed") scheduleRefresh(150);
          break;
        case "workflow.task.mine":
          if (view === "offered") removeRow(data.id);
          scheduleRefresh(150);
          break;
        default:
          break;
      }
    });
    socket.addEventListener("close", () => {
      setStatus("offline — reconnecting", false);
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 30000);
    });
  }

  tick();
  setInterval(tick, 1000);
  connect();
})();
