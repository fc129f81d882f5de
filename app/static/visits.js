// Count visits live over one websocket kept open while the page is.
// When this device's session ends elsewhere (logged out from another device, or past its
// deadline), the server closes the socket with code 1008 and the page says so.
"use strict";
(function () {
  const button = document.getElementById("live-visit");
  const output = document.getElementById("visits");
  const status = document.getElementById("live-status");
  const token = document.querySelector('meta[name="csrf-token"]').content;
  const SESSION_ENDED = 1008;

  // The same host and port as the page, over ws: or wss: to match http: or https:.
  function socketUrl(link) {
    const url = new URL(link, window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    url.host = window.location.host;
    return url.href;
  }

  const socket = new WebSocket(socketUrl(button.dataset.url));
  button.disabled = true;
  status.textContent = "Connecting…";

  socket.addEventListener("open", function () {
    button.disabled = false;
    status.textContent = "Live.";
    document.body.dataset.live = "open";
  });
  socket.addEventListener("message", function (event) {
    const reply = JSON.parse(event.data);
    if (typeof reply.visits === "number") {
      output.textContent = String(reply.visits);
      status.textContent = "Counted live.";
      document.body.dataset.liveSaved = "yes";
    } else {
      status.textContent = "Not counted: " + reply.error;
    }
  });
  socket.addEventListener("close", function (event) {
    button.disabled = true;
    if (event.code === SESSION_ENDED) {
      status.textContent = "You were logged out: this device's session ended.";
      document.body.dataset.live = "logged-out";
    } else {
      status.textContent = "The live connection closed. Reload the page to reconnect.";
      document.body.dataset.live = "closed";
    }
  });

  button.addEventListener("click", function () {
    socket.send(JSON.stringify({ action: "visit", csrf_token: token }));
  });
})();
