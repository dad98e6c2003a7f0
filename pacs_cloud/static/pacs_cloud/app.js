// Small behaviours shared by every page (no framework).
document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
  select.addEventListener("change", () => select.form.submit());
});

// A time as every page shows it: in the institution's time zone (named by the server on
// <body data-time-zone>), with its offset — "2026-12-07 14:03 UTC+8", as the |when filter writes.
window.pacsTime = function (value, { seconds = false } = {}) {
  const timeZone = document.body.dataset.timeZone || "UTC";
  const format = new Intl.DateTimeFormat("en-US", {
    timeZone,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
    hour: "2-digit",
    minute: "2-digit",
    second: seconds ? "2-digit" : undefined,
    hourCycle: "h23",
    timeZoneName: "shortOffset",
  });
  const part = Object.fromEntries(format.formatToParts(new Date(value)).map((p) => [p.type, p.value]));
  const offset = part.timeZoneName.replace(/^(GMT|UTC)/, ""); // "GMT+8"; "GMT" or "GMT+0" for UTC itself
  const zone = /^[+-]?0?$/.test(offset) ? "UTC" : `UTC${offset}`;
  const time = `${part.hour}:${part.minute}${seconds ? `:${part.second}` : ""}`;
  return `${part.year}-${part.month}-${part.day} ${time} ${zone}`;
};
