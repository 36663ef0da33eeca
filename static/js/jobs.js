// Live job status: Server-Sent Events when available, polling otherwise. No dependencies.
(function () {
  "use strict";

  // A job status as the label table (app/labels.py) writes it: "NOT_RUN" → "Not run".
  function statusLabel(status) {
    var text = status.toLowerCase().replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function setStatus(cell, status) {
    if (!cell) return;
    var badge = cell.querySelector(".badge") || cell;
    badge.textContent = statusLabel(status);
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
    var resultBox = root.querySelector('[data-field="result-box"]');
    if (resultBox && job.result) resultBox.hidden = false;
    var final = ["SUCCEEDED", "FAILED", "CANCELLED"].indexOf(job.status) >= 0;
    var cancel = root.querySelector("[data-cancel-form]");
    if (cancel) cancel.hidden = final;
    var retry = root.querySelector("[data-retry-form]");
    if (retry) retry.hidden = !final;
    return final;
  }

  function atBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 24;
  }

  function appendLog(list, line) {
    var last = parseInt(list.getAttribute("data-last-seq") || "0", 10);
    if (line.seq <= last) return;
    var follow = atBottom(list);
    var item = document.createElement("li");
    item.className = "log-" + (line.level || "info").toLowerCase();
    item.setAttribute("data-seq", line.seq);
    var time = document.createElement("time");
    time.textContent = line.time ? line.time.substring(11, 19) : "";
    item.appendChild(time);
    item.appendChild(document.createTextNode(" " + line.message));
    list.appendChild(item);
    list.setAttribute("data-last-seq", String(line.seq));
    // Keep following the newest line unless the reader scrolled up to read older ones.
    if (follow) list.scrollTop = list.scrollHeight;
  }

  function applyChildren(doc, children) {
    var steps = doc.querySelector("[data-steps]");
    if (!steps || !children) return;
    // Newest child of each kind wins (the list comes newest first).
    var seen = {};
    children.forEach(function (child) {
      if (seen[child.kind]) return;
      seen[child.kind] = true;
      var item = steps.querySelector('[data-step="' + child.kind + '"]');
      if (!item) return;
      item.setAttribute("data-status", child.status);
      item.className = "step stage-" + child.status.toLowerCase();
      setStatus(item.querySelector('[data-field="status"]'), child.status);
      var step = item.querySelector('[data-field="step"]');
      if (step) {
        step.textContent = "";
        var link = doc.createElement("a");
        link.href = "/jobs/" + child.id;
        var code = doc.createElement("code");
        code.textContent = child.id;
        link.appendChild(code);
        step.appendChild(link);
        step.appendChild(doc.createTextNode(" " + child.step));
      }
    });
  }

  function refreshProduced(doc) {
    // What a job produced is derived on the server from its result: take it from the page.
    fetch(window.location.href, {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var now = fresh.querySelector('[data-field="produced"]');
        var old = doc.querySelector('[data-field="produced"]');
        if (now && old) old.replaceWith(now);
      })
      .catch(function () { /* the links appear on the next visit */ });
  }

  function followDetail(root) {
    var doc = root.ownerDocument;
    var list = doc.querySelector("[data-log]");
    var statusUrl = root.getAttribute("data-status-url");
    var eventsUrl = root.getAttribute("data-events-url");
    var polling = null;
    var childPolling = null;
    // The badge's text is the label ("Succeeded"); its class names the state.
    var wasFinal = /\bbadge-(succeeded|failed|cancelled)\b/.test(
      (root.querySelector('[data-field="status"] .badge') || {}).className || "");
    // Open on the newest line: a finished job's last line is the one a reader wants.
    if (list) list.scrollTop = list.scrollHeight;

    function poll() {
      var after = list ? list.getAttribute("data-last-seq") : "0";
      fetch(statusUrl + "?after=" + after, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) return;
          data.log.forEach(function (line) { if (list) appendLog(list, line); });
          applyChildren(doc, data.children);
          var final = applyJob(root, data.job);
          if (final && !wasFinal) { wasFinal = true; refreshProduced(doc); }
          if (final && polling) { clearInterval(polling); polling = null; }
          if (final && childPolling) { clearInterval(childPolling); childPolling = null; }
        })
        .catch(function () { /* keep polling; the network may come back */ });
    }

    // A pipeline's stages are separate jobs: follow them with a slow poll next to the stream.
    if (doc.querySelector("[data-steps]") && !wasFinal) childPolling = setInterval(poll, 2000);

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
      // The stream ends every half minute by design and the browser reconnects; if it
      // stays closed (the panel cannot be reached), poll instead.
      if (source.readyState === EventSource.CLOSED) startPolling();
    };
    // Too many open streams (this user's other pages, or the server's cap) or no Redis: the
    // panel answers one "capped" event instead of job events. Poll instead.
    source.addEventListener("capped", function () { source.close(); startPolling(); });
    source.onopen = function () { poll(); };
  }

  function followTable(table) {
    var polling = null;
    function poll() {
      // Updates the rows shown; new jobs appear on the next visit (the stream inserts them).
      fetch("/api/v1/jobs?limit=100", {headers: {"Accept": "application/json"}, credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) return;
          data.jobs.forEach(function (job) {
            var row = table.querySelector('tr[data-job-id="' + job.id + '"]');
            if (row) applyJob(row, job);
          });
        })
        .catch(function () { /* keep polling */ });
    }
    function startPolling() { if (!polling) { poll(); polling = setInterval(poll, 5000); } }

    if (!window.EventSource) { startPolling(); return; }
    var source = new EventSource("/jobs/events");
    source.addEventListener("job", function (e) {
      var job = JSON.parse(e.data).job;
      var row = table.querySelector('tr[data-job-id="' + job.id + '"]');
      if (row) applyJob(row, job);
      else if (!table.hasAttribute("data-no-insert")) window.location.reload();
    });
    source.onerror = function () {
      // The panel cannot be reached and the browser gives up: poll.
      if (source.readyState === EventSource.CLOSED) startPolling();
    };
    // Too many open streams or no Redis: one "capped" event instead of job events. Poll.
    source.addEventListener("capped", function () { source.close(); startPolling(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var detail = document.querySelector("[data-job-detail]");
    if (detail) { followDetail(detail); return; }
    document.querySelectorAll("[data-live-jobs]").forEach(followTable);
  });
})();
