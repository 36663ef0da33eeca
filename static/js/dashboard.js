// The dashboard, live: stage cards and the latest jobs follow the job event stream; the
// environment cards are re-fetched when a job that changes them ends. Polling when the stream
// is unavailable. No dependencies, no inline styles (CSP).
(function () {
  "use strict";

  var FINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];
  var ENV_KINDS = ["deploy", "publish", "rotate-keys", "pipeline", "train"];

  function isFinal(status) { return FINAL.indexOf(status) >= 0; }

  // A job status as the label table (app/labels.py) writes it: "NOT_RUN" → "Not run".
  function statusLabel(status) {
    var text = status.toLowerCase().replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function badge(doc, status) {
    var span = doc.createElement("span");
    span.className = "badge badge-" + status.toLowerCase();
    span.textContent = statusLabel(status);
    return span;
  }

  function timeText(iso) {
    // "2026-11-25T00:37:55.798+00:00" → "2026-11-25 00:37 UTC"
    return iso ? iso.substring(0, 10) + " " + iso.substring(11, 16) + " UTC" : "";
  }

  function summaryOf(job) {
    if (job.status === "FAILED") return (job.error || "failed").split("\n")[0].substring(0, 160);
    if (job.status !== "SUCCEEDED") return job.step;
    var r = job.result || {};
    var m = r.model || {};
    if (job.kind === "provision") return "workspace " + (r.workspace || "?") + " on " + (r.backend || "?");
    if (job.kind === "train") return (m.name || "?") + " version " + (m.version || "?");
    if (job.kind === "deploy") return (m.name || "?") + " v" + (m.version || "?") + " on the " + (r.slot || "?") + " slot of " + (r.environment || "?");
    if (job.kind === "publish") return (r.api || "?") + " revision " + (r.revision || "?");
    return job.step;
  }

  function applyStage(card, job) {
    var doc = card.ownerDocument;
    var shown = card.getAttribute("data-created") || "";
    // Only the newest job of the stage's kind is shown; older events are ignored.
    if (card.getAttribute("data-job-id") !== job.id && shown && job.created_at < shown) return;
    card.setAttribute("data-job-id", job.id);
    card.setAttribute("data-created", job.created_at);
    card.setAttribute("data-status", job.status);
    card.className = "stage stage-" + job.status.toLowerCase();
    var status = card.querySelector('[data-field="status"]');
    status.textContent = "";
    status.appendChild(badge(doc, job.status));
    card.querySelector('[data-field="summary"]').textContent = summaryOf(job);
    var bar = card.querySelector('[data-field="progress"] progress');
    if (bar) {
      bar.value = job.progress;
      bar.className = "progress progress-" + job.status.toLowerCase();
      bar.textContent = job.progress + "%";
    }
    var meta = card.querySelector('[data-field="meta"]');
    meta.textContent = "";
    var link = doc.createElement("a");
    link.href = "/jobs/" + job.id;
    var code = doc.createElement("code");
    code.textContent = job.id;
    link.appendChild(code);
    meta.appendChild(link);
    meta.appendChild(doc.createTextNode(" by "));
    var by = doc.createElement("span");
    by.setAttribute("data-field", "by");
    by.textContent = job.requested_by;
    meta.appendChild(by);
    meta.appendChild(doc.createTextNode(", "));
    var time = doc.createElement("time");
    time.setAttribute("datetime", job.created_at);
    time.textContent = timeText(job.created_at);
    meta.appendChild(time);
  }

  function applyRow(row, job) {
    var status = row.querySelector('[data-field="status"]');
    if (status) { status.textContent = ""; status.appendChild(badge(row.ownerDocument, job.status)); }
    var bar = row.querySelector('[data-field="progress"] progress');
    if (bar) {
      bar.value = job.progress;
      bar.className = "progress progress-" + job.status.toLowerCase();
      bar.textContent = job.progress + "%";
    }
    var step = row.querySelector('[data-field="step"]');
    if (step) step.textContent = job.step;
  }

  function debounce(fn, ms) {
    var timer = null;
    return function () {
      if (timer) clearTimeout(timer);
      timer = setTimeout(function () { timer = null; fn(); }, ms);
    };
  }

  function replaceWith(url, target) {
    fetch(url, {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString("<div>" + html + "</div>", "text/html");
        var holder = fresh.body.firstChild;
        target.textContent = "";
        while (holder && holder.firstChild) target.appendChild(holder.firstChild);
      })
      .catch(function () { /* the next event or poll tries again */ });
  }

  function start(root) {
    var doc = root.ownerDocument;
    var envTarget = doc.querySelector("[data-environments]");
    var jobsTarget = doc.querySelector("[data-latest-jobs]");
    var refreshEnvironments = debounce(function () {
      if (envTarget) replaceWith(root.getAttribute("data-environments-url"), envTarget);
    }, 400);
    var refreshJobs = debounce(function () {
      if (jobsTarget) replaceWith(root.getAttribute("data-jobs-url"), jobsTarget);
    }, 400);

    function onJob(job) {
      var last = doc.querySelector('[data-last-pipeline="' + job.id + '"] [data-field="status"]');
      if (last) { last.textContent = ""; last.appendChild(badge(doc, job.status)); }
      var card = root.querySelector('.stage[data-kind="' + job.kind + '"]');
      // Stage cards follow the pipeline's environment only (a prod deploy is a promotion's).
      var env = (job.params || {}).environment || "staging";
      var acts = job.kind === "deploy" || job.kind === "publish";
      if (card && (!acts || env === card.getAttribute("data-environment"))) applyStage(card, job);
      var row = jobsTarget && jobsTarget.querySelector('tr[data-job-id="' + job.id + '"]');
      if (row) applyRow(row, job); else refreshJobs();
      if (isFinal(job.status) && ENV_KINDS.indexOf(job.kind) >= 0) refreshEnvironments();
    }

    var polling = null;
    function poll() {
      fetch(root.getAttribute("data-state-url"), {headers: {"Accept": "application/json"}, credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) return;
          data.stages.forEach(function (stage) {
            var card = root.querySelector('.stage[data-kind="' + stage.kind + '"]');
            if (!card || !stage.job) return;
            if (card.getAttribute("data-status") !== stage.job.status) refreshEnvironments();
            applyStage(card, stage.job);
          });
          data.jobs.forEach(onJob);
        })
        .catch(function () { /* keep polling */ });
    }
    function startPolling() { if (!polling) { poll(); polling = setInterval(poll, 3000); } }

    if (!window.EventSource) { startPolling(); return; }
    var source = new EventSource(root.getAttribute("data-events-url"));
    source.addEventListener("job", function (e) { onJob(JSON.parse(e.data).job); });
    // Catch up on whatever happened between rendering the page and the stream opening.
    source.onopen = function () { if (polling) { clearInterval(polling); polling = null; } poll(); };
    source.onerror = function () {
      // The stream ends every half minute by design and the browser reconnects; if it
      // stays closed (the panel cannot be reached), the page polls.
      if (source.readyState === EventSource.CLOSED) startPolling();
    };
    // Too many open streams (this user's other pages, or the server's cap) or no Redis: the
    // panel answers one "capped" event instead of job events, and the page polls.
    source.addEventListener("capped", function () { source.close(); startPolling(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var root = document.querySelector("[data-dashboard]");
    if (root) start(root);
  });
})();
