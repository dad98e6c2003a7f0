// Keep the search form filled with the current search (read from the address, so the
// page itself never repeats what was searched for).
(function () {
  "use strict";
  const params = new URLSearchParams(window.location.search);
  document.querySelectorAll("#lookup [name], #verify-code [name]").forEach((field) => {
    if (params.has(field.name)) field.value = params.get(field.name);
  });
})();
