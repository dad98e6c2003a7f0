// The set-up checklist follows the edge's heartbeat and the first study: it reads
// the checklist's state from the API every few seconds and turns steps green.
(function () {
  "use strict";
  var list = document.getElementById("checklist");
  if (!list) return;
  var url = list.getAttribute("data-status-url");

  function apply(status) {
    status.steps.forEach(function (step) {
      var item = document.getElementById("check-" + step.key);
      if (!item) return;
      item.classList.toggle("done", step.done);
      item.setAttribute("data-done", step.done ? "1" : "0");
      var detail = item.querySelector(".detail");
      if (detail) detail.textContent = step.detail;
    });
    var light = document.getElementById("edge-light");
    if (light) {
      light.classList.toggle("ok", status.edge_connected);
      light.textContent = status.edge_connected ? "edge connected" : "no edge connected";
    }
    var first = document.getElementById("first-study");
    if (first && status.first_study_at) {
      first.textContent = "First study received " + new Date(status.first_study_at).toLocaleString(undefined, { timeZone: document.body.getAttribute("data-time-zone") || "UTC" }) + ".";
    }
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (answer) { return answer.ok ? answer.json() : null; })
      .then(function (status) { if (status) apply(status); })
      .catch(function () {})
      .then(function () { window.setTimeout(poll, 2000); });
  }
  window.setTimeout(poll, 2000);
})();
