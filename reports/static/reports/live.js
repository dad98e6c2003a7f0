// Live critical results: a push over /ws/notifications/ shows an alert at once.
(function () {
  "use strict";
  if (window.reportsLive) return;
  window.reportsLive = true;
  function show(data) {
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
  let backoff = 1000;
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws/notifications/`);
    socket.addEventListener("open", () => { backoff = 1000; document.body.dataset.reportsLive = "on"; });
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
})();
