// Live referral pages: a push about a referral shown here (workflow.referral.*,
// workflow.share.*) shows a notice and re-draws the page from the server, so the
// inbox, outbox and timeline follow every change made elsewhere.
(function () {
  "use strict";
  const marker = document.querySelector("[data-live-referrals]");
  if (!marker) return;
  const status = document.getElementById("live-status");
  const notice = document.getElementById("live-notice");
  const detailId = marker.dataset.referral || null;
  let backoff = 1000;
  let reloadTimer = null;

  function setStatus(text, ok) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("ok", ok);
  }

  function describe(message) {
    const event = (message.data && message.data.event) || "";
    const labels = {
      created: "a new referral",
      send: "a referral was sent",
      accept: "a referral was accepted",
      decline: "a referral was declined",
      admit: "a referred patient is in care",
      return_to_sender: "a patient was returned",
      close: "a referral was closed",
      cancel: "a referral was cancelled",
      message: "a new message",
      reminder: "a response reminder",
      updated: "a referral changed",
    };
    return labels[event] || "a referral changed";
  }

  function redraw(message) {
    if (notice) {
      notice.textContent = `Update: ${describe(message)} — refreshing…`;
      notice.hidden = false;
    }
    if (reloadTimer) clearTimeout(reloadTimer);
    // A short delay lets several pushes of one change arrive before one re-draw;
    // a form the user is filling in is never thrown away.
    reloadTimer = setTimeout(() => {
      const typing = Array.from(document.querySelectorAll("textarea, input[type=text], input:not([type])")).some(
        (el) => el.value && el.name !== "q"
      );
      if (!typing) window.location.reload();
    }, 300);
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws/notifications/`);
    socket.addEventListener("open", () => {
      backoff = 1000;
      setStatus("live", true);
      marker.dataset.live = "connected";
    });
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      const topic = message.topic || "";
      if (!topic.startsWith("workflow.referral.") && !topic.startsWith("workflow.share.")) return;
      const id = message.data && (message.data.referral || message.data.id);
      if (detailId && topic.startsWith("workflow.referral.") && id !== detailId) return;
      if (detailId && topic.startsWith("workflow.share.") && message.data.referral !== detailId) return;
      redraw(message);
    });
    socket.addEventListener("close", () => {
      setStatus("offline — reconnecting", false);
      marker.dataset.live = "";
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 30000);
    });
  }

  connect();
})();
