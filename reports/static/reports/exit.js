// Progress of running exports: re-read each queued or running job every two seconds.
(function () {
  "use strict";
  function poll(row) {
    fetch("/api/v1/exits/" + row.dataset.job + "/", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (job) {
        if (!job) return;
        row.querySelector("progress").value = job.progress;
        row.querySelector(".files").textContent = job.files_done + " / " + job.files_total + " files";
        if (job.state !== row.dataset.state) { window.location.reload(); return; }
        setTimeout(function () { poll(row); }, 2000);
      });
  }
  document.querySelectorAll("tr[data-job]").forEach(function (row) {
    if (row.dataset.state === "queued" || row.dataset.state === "running") poll(row);
  });
})();
