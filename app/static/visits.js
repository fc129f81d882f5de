// Count a visit over a websocket: one connection per click, one message, one answer.
"use strict";
(function () {
  const button = document.getElementById("live-visit");
  const output = document.getElementById("visits");
  const status = document.getElementById("live-status");
  const token = document.querySelector('meta[name="csrf-token"]').content;

  // The same host and port as the page, over ws: or wss: to match http: or https:.
  function socketUrl(link) {
    const url = new URL(link, window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    url.host = window.location.host;
    return url.href;
  }

  button.addEventListener("click", function () {
    button.disabled = true;
    status.textContent = "Counting…";
    const socket = new WebSocket(socketUrl(button.dataset.url));
    let answered = false;
    socket.addEventListener("open", function () {
      socket.send(JSON.stringify({ action: "visit", csrf_token: token }));
    });
    socket.addEventListener("message", function (event) {
      const reply = JSON.parse(event.data);
      answered = true;
      if (typeof reply.visits === "number") {
        output.textContent = String(reply.visits);
        status.textContent = "Counted live.";
      } else {
        status.textContent = "Not counted: " + reply.error;
      }
    });
    // The server stores the session before it closes the socket.
    socket.addEventListener("close", function () {
      button.disabled = false;
      if (!answered) {
        status.textContent = "The connection closed without an answer.";
      }
      document.body.dataset.liveSaved = "yes";
    });
  });
})();
