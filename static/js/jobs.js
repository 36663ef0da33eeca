// Live job status: Server-Sent Events when available, polling otherwise. No dependencies.
(function () {
  "use strict";

  function setStatus(cell, status) {
    if (!cell) return;
    var badge = cell.querySelector(".badge") || cell;
    badge.textContent = status;
    badge.className = "badge badge-" + status.toLowerCase();
  }

  function setProgress(cell, job) {
    if (!cell) return;
    var bar = cell.querySelector("progress");
    if (bar) {
      bar.value = job.progress;
      bar.className = "progress progress-" + job.status.toLowerCase();
      bar.textContent = job.progress + "%";
    }
  }

  function applyJob(root, job) {
    setStatus(root.querySelector('[data-field="status"]'), job.status);
    setProgress(root.querySelector('[data-field="progress"]'), job);
    var step = root.querySelector('[data-field="step"]');
    if (step) step.textContent = job.step;
    var percent = root.querySelector('[data-field="percent"]');
    if (percent) percent.textContent = job.progress + "%";
    var attempts = root.querySelector('[data-field="attempts"]');
    if (attempts) attempts.textContent = job.attempts + " of " + job.max_attempts;
    var duration = root.querySelector('[data-field="duration"]');
    if (duration && job.duration_seconds !== null) duration.textContent = job.duration_seconds.toFixed(1) + " s";
    var error = root.querySelector('[data-field="error"]');
    if (error) { error.hidden = !job.error; error.textContent = job.error || ""; }
    var result = root.querySelector('[data-field="result"]');
    if (result && job.result) { result.hidden = false; result.textContent = JSON.stringify(job.result, null, 2); }
    var final = ["SUCCEEDED", "FAILED", "CANCELLED"].indexOf(job.status) >= 0;
    var cancel = root.querySelector("[data-cancel-form]");
    if (cancel && final) cancel.hidden = true;
    return final;
  }

  function appendLog(list, line) {
    var last = parseInt(list.getAttribute("data-last-seq") || "0", 10);
    if (line.seq <= last) return;
    var item = document.createElement("li");
    item.className = "log-" + (line.level || "info").toLowerCase();
    item.setAttribute("data-seq", line.seq);
    var time = document.createElement("time");
    time.textContent = line.time ? line.time.substring(11, 19) : "";
    item.appendChild(time);
    item.appendChild(document.createTextNode(" " + line.message));
    list.appendChild(item);
    list.setAttribute("data-last-seq", String(line.seq));
  }

  function followDetail(root) {
    var list = root.ownerDocument.querySelector("[data-log]");
    var statusUrl = root.getAttribute("data-status-url");
    var eventsUrl = root.getAttribute("data-events-url");
    var polling = null;

    function poll() {
      var after = list ? list.getAttribute("data-last-seq") : "0";
      fetch(statusUrl + "?after=" + after, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) return;
          data.log.forEach(function (line) { if (list) appendLog(list, line); });
          if (applyJob(root, data.job) && polling) { clearInterval(polling); polling = null; }
        })
        .catch(function () { /* keep polling; the network may come back */ });
    }

    function startPolling() {
      if (!polling) { poll(); polling = setInterval(poll, 1500); }
    }

    if (!window.EventSource) { startPolling(); return; }
    var source = new EventSource(eventsUrl);
    source.addEventListener("job", function (e) {
      var data = JSON.parse(e.data);
      if (applyJob(root, data.job)) { poll(); source.close(); }
    });
    source.addEventListener("log", function (e) {
      var data = JSON.parse(e.data);
      if (list) appendLog(list, data.line);
    });
    source.onerror = function () {
      // The stream ends every minute by design and the browser reconnects; if it keeps
      // failing (no Redis), fall back to polling.
      if (source.readyState === EventSource.CLOSED) startPolling();
    };
    source.onopen = function () { poll(); };
  }

  function followTable(table) {
    if (!window.EventSource) return;
    var source = new EventSource("/jobs/events");
    source.addEventListener("job", function (e) {
      var job = JSON.parse(e.data).job;
      var row = table.querySelector('tr[data-job-id="' + job.id + '"]');
      if (row) applyJob(row, job);
      else if (!table.hasAttribute("data-no-insert")) window.location.reload();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var detail = document.querySelector("[data-job-detail]");
    if (detail) { followDetail(detail); return; }
    document.querySelectorAll("[data-live-jobs]").forEach(followTable);
  });
})();
