// The 2D viewer's "3D" link: opens the server-rendered 3D view of the series on screen.
(function () {
  "use strict";
  const link = document.getElementById("open-3d");
  if (!link) return;
  function follow() {
    const viewer = window.pacsViewer;
    const series = viewer && viewer.state.series;
    if (!series) return;
    link.href = `/viewer/series/${series.id}/3d/`;
    link.hidden = false;
  }
  // The viewer shows a series after its manifest loads and whenever the reader picks another.
  document.addEventListener("click", () => setTimeout(follow, 0));
  const waiting = setInterval(() => {
    follow();
    if (!link.hidden) clearInterval(waiting);
  }, 200);
})();
