// Registration form: offer only the stations of the chosen procedure's modality.
(function () {
  "use strict";
  var data = document.getElementById("order-modalities");
  var procedure = document.querySelector("select[name=procedure]");
  var station = document.querySelector("select[name=station]");
  if (!data || !procedure || !station || procedure.disabled) { return; }
  var modalities = JSON.parse(data.textContent);

  function offer() {
    var wanted = modalities.procedures[procedure.value];
    var firstMatch = null;
    Array.prototype.forEach.call(station.options, function (option) {
      var fits = !option.value || !wanted || modalities.stations[option.value] === wanted;
      option.hidden = !fits;
      option.disabled = !fits;
      if (fits && option.value && firstMatch === null) { firstMatch = option; }
    });
    var current = station.options[station.selectedIndex];
    if (wanted && (!current || !current.value || current.disabled) && firstMatch) {
      station.value = firstMatch.value;
    }
  }
  procedure.addEventListener("change", offer);
  offer();
})();
