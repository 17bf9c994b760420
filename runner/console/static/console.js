// The approvals page keeps its list current without a reload: it asks the server for the
// pending list every second and swaps it in when a request came or went (or its client stopped
// waiting); in between it only moves the "waited" times on, so a half-typed reason stays put.
(function () {
  "use strict";
  const wrap = document.getElementById("pending-wrap");
  if (!wrap) { return; }
  const url = wrap.dataset.poll;
  const every = Number(wrap.dataset.pollMs) || 1000;
  let skew = 0; // server clock minus this browser's, in seconds

  function list(root) { return root.querySelector("#pending"); }

  function waited(seconds) {
    if (seconds < 90) { return Math.max(0, Math.round(seconds)) + " s"; }
    if (seconds < 5400) { return Math.round(seconds / 60) + " min"; }
    return (seconds / 3600).toFixed(1) + " h";
  }

  function tick() {
    const now = Date.now() / 1000 + skew;
    for (const cell of wrap.querySelectorAll(".waited[data-asked]")) {
      cell.textContent = waited(now - Number(cell.dataset.asked));
    }
  }

  async function refresh() {
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (response.redirected || !response.ok) { return; }
      const next = document.createElement("div");
      next.innerHTML = await response.text();
      const fresh = list(next);
      if (!fresh) { return; }
      skew = Number(fresh.dataset.now) - Date.now() / 1000;
      const shown = list(wrap);
      if (!shown || shown.dataset.ids !== fresh.dataset.ids) {
        wrap.replaceChildren(...next.childNodes);
      }
      tick();
    } catch (err) {
      // the server is restarting or the network is down: try again on the next round
    } finally {
      window.setTimeout(refresh, every);
    }
  }
  window.setTimeout(refresh, every);
})();
