// Live critical results: a push over /ws/notifications/ shows an alert at once. After a
// dropped connection, and every 20 s, the open critical results are fetched again, so a
// push missed while disconnected or lost on its way still shows.
(function () {
  "use strict";
  if (window.reportsLive) return;
  window.reportsLive = true;
  const shown = new Set();
  function show(data) {
    if (!data || !data.id || shown.has(data.id)) return;
    shown.add(data.id);
    const box = document.createElement("div");
    box.className = "live-alert";
    box.setAttribute("role", "alert");
    const title = data.event === "escalated" ? "Unacknowledged critical result" : "Critical result";
    const link = document.createElement("a");
    link.href = data.url;
    link.textContent = "Open and acknowledge";
    box.append(`${title}: ${data.note || ""} `, link);
    document.body.appendChild(box);
  }
  async function catchUp() {
    try {
      const response = await fetch("/api/v1/critical-results/?open=1", { credentials: "same-origin" });
      if (!response.ok) return;
      (await response.json()).results.forEach((r) => {
        show({ id: r.id, url: r.report_url, note: r.note, event: r.escalated_at ? "escalated" : "flagged" });
      });
    } catch (error) { /* offline: the next connection tries again */ }
  }
  let backoff = 1000;
  let connectedBefore = false;
  document.querySelectorAll("[data-critical-id]").forEach((row) => shown.add(row.dataset.criticalId));
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws/notifications/`);
    socket.addEventListener("open", () => {
      backoff = 1000;
      if (connectedBefore) catchUp();
      connectedBefore = true;
      document.body.dataset.reportsLive = "on";
    });
    socket.addEventListener("message", (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (error) { return; }
      if (message.topic === "reports.critical" && message.data && message.data.event !== "acknowledged") show(message.data);
    });
    socket.addEventListener("close", () => {
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 30000);
    });
  }
  connect();
  // A push lost on its way (a broker hiccup) is caught up within the interval.
  setInterval(catchUp, 20000);
})();
