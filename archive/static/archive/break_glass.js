// Administrators: a break-glass access anywhere they administer shows up at once (push over /ws/notifications/).
(function () {
  "use strict";
  var banner = document.getElementById("break-glass-live");
  if (!banner || !window.WebSocket) return;
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var socket = new WebSocket(scheme + location.host + "/ws/notifications/");
  // Joined the administrators' groups (the server accepts only after joining).
  socket.onopen = function () { banner.dataset.live = "1"; };
  socket.onmessage = function (event) {
    var message = JSON.parse(event.data);
    if (message.topic !== "break_glass.opened") return;
    banner.hidden = false;
    banner.textContent = "Break-glass access just opened by " + message.data.user + ". Reload to review it.";
  };
})();
