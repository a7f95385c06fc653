// connector-runtime dashboard: live updates over /api/events, fresh "3 min ago" texts.
// The pages work without this file; it only keeps them current.
"use strict";

(function () {
  const live = document.getElementById("live");

  function ago(iso) {
    const seconds = (Date.now() - Date.parse(iso)) / 1000;
    const future = seconds < 0;
    const size = Math.abs(seconds);
    if (size < 45) return future ? "in a moment" : "just now";
    for (const [unit, span] of [["d", 86400], ["h", 3600], ["min", 60]]) {
      if (size >= span) {
        const amount = Math.round(size / span);
        return future ? `in ${amount} ${unit}` : `${amount} ${unit} ago`;
      }
    }
    return "just now";
  }

  function refreshTimes() {
    for (const time of document.querySelectorAll("time[datetime]")) {
      time.textContent = ago(time.getAttribute("datetime"));
    }
  }

  function progressText(sync) {
    const rows = (sync.rows || 0).toLocaleString("en-US");
    let text = `page ${sync.page || 0} · ${rows} rows`;
    if (sync.rows_per_s) text += ` · ${Math.round(sync.rows_per_s).toLocaleString("en-US")} rows/s`;
    return text;
  }

  function showProgress(sync) {
    for (const element of document.querySelectorAll("[data-progress]")) {
      if (element.dataset.progress === sync.connector) element.textContent = progressText(sync);
    }
  }

  let reloading = null;
  function reloadSoon() {
    // a page in the middle of a confirmation keeps its state
    if (document.querySelector("form.confirm") || reloading) return;
    reloading = setTimeout(() => window.location.reload(), 400);
  }

  function connect() {
    const events = new EventSource("/api/events");
    events.onopen = () => {
      live.classList.add("on");
      live.title = "live updates: connected";
    };
    events.onerror = () => {
      live.classList.remove("on");
      live.title = "live updates: reconnecting";
    };
    events.addEventListener("sync.progress", (event) => showProgress(JSON.parse(event.data).sync));
    for (const name of ["sync.started", "sync.finished", "alert.opened", "alert.resolved"]) {
      events.addEventListener(name, reloadSoon);
    }
  }

  refreshTimes();
  setInterval(refreshTimes, 30000);
  if (window.EventSource) connect();
})();
