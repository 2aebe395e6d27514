// Live job state. Every element marked data-job-id shows a job's state, stage and progress; while any of
// them is active the page asks the dashboard for their state every two seconds and updates them in place.
// A job's own page (body data-reload-when-done) reloads once its job ends, to show the results.
"use strict";

(function () {
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  const POLL_MS = 2000;
  const liveUrl = document.body.dataset.liveUrl;
  const reloadWhenDone = document.body.dataset.reloadWhenDone === "true";

  function cells() {
    return Array.from(document.querySelectorAll("[data-job-id]"));
  }

  function show(cell, job) {
    const field = (name) => cell.querySelector(`[data-field="${name}"]`);
    const wasActive = !FINAL.has(cell.dataset.state);
    cell.dataset.state = job.state;
    field("state").textContent = job.state;
    field("state").className = `state state-${job.state}`;
    field("stage").textContent = job.stage || "";
    field("progress").value = job.progress;
    field("percent").textContent = `${(100 * job.progress).toFixed(1)}%`;
    const message = document.querySelector(`[data-job-message="${cell.dataset.jobId}"]`);
    if (message) {
      message.textContent = job.message || "";
    }
    return wasActive && FINAL.has(job.state);
  }

  async function poll() {
    const active = cells().filter((cell) => !FINAL.has(cell.dataset.state));
    if (active.length === 0) {
      return;
    }
    const query = new URLSearchParams();
    new Set(active.map((cell) => cell.dataset.jobId)).forEach((id) => query.append("id", id));
    let states = null;
    try {
      const response = await fetch(`${liveUrl}?${query}`, { headers: { Accept: "application/json" } });
      if (response.status === 401) {
        return; // signed out elsewhere: stop asking
      }
      states = response.ok ? await response.json() : null;
    } catch (error) {
      states = null; // the server is restarting, say: try again later
    }
    let ended = false;
    for (const cell of active) {
      const job = states && states[cell.dataset.jobId];
      if (job) {
        ended = show(cell, job) || ended;
      }
    }
    if (ended && reloadWhenDone) {
      window.location.reload();
      return;
    }
    window.setTimeout(poll, POLL_MS);
  }

  window.setTimeout(poll, POLL_MS);
})();
