// The day's worklist and the reconciliation queue stay current: when the
// server pushes a change on the table's topic, the rows are fetched again.
(function () {
  "use strict";
  document.querySelectorAll("input[data-autosubmit-input]").forEach(function (input) {
    input.addEventListener("change", function () { input.form.submit(); });
  });

  var table = document.querySelector("[data-live-topic]");
  if (!table) { return; }
  var status = document.getElementById("live-status");
  var topic = table.dataset.liveTopic;
  var loading = false;
  var again = false;
  var retry = 1000;
  var connectedBefore = false;

  function show(text, state) {
    if (status) { status.textContent = text; status.dataset.state = state; }
  }

  function refresh() {
    if (loading) { again = true; return; }
    loading = true;
    fetch(table.dataset.fragmentUrl, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        var holder = document.createElement("table");
        holder.innerHTML = html;
        var rows = holder.querySelector("tbody");
        var old = table.querySelector("tbody");
        if (rows && old) { old.replaceWith(rows); }
        table.dataset.refreshed = String(Number(table.dataset.refreshed || "0") + 1);
      })
      .catch(function () { show("Could not refresh: reload the page", "offline"); })
      .finally(function () {
        loading = false;
        if (again) { again = false; refresh(); }
      });
  }

  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + "/ws/notifications/");
    socket.onopen = function () {
      retry = 1000;
      show("Live", "live");
      // After a reconnect, pushes may have been missed while offline.
      if (connectedBefore) { refresh(); }
      connectedBefore = true;
    };
    socket.onmessage = function (event) {
      var message = JSON.parse(event.data);
      if (message.topic !== topic) { return; }
      var day = table.dataset.liveDate;
      if (day && message.data && message.data.date && message.data.date !== day) { return; }
      refresh();
    };
    socket.onclose = function () {
      show("Live updates paused, reconnecting…", "offline");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    };
  }
  connect();
})();
