// Score tester: copy buttons, and batch mode (the CSV is read here and sent in chunks to a
// JSON endpoint that scores at most max-chunk rows per call). No dependencies.
(function () {
  "use strict";

  function copy(button) {
    var target = document.getElementById(button.getAttribute("data-copy"));
    if (!target) return;
    var text = target.textContent;
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () { selectText(target); });
    } else {
      selectText(target);
    }
  }

  function selectText(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // RFC 4180 CSV: quoted fields, doubled quotes, CRLF or LF line ends.
  function parseCsv(text) {
    var rows = [], row = [], field = "", i = 0, quoted = false;
    if (text.charCodeAt(0) === 0xfeff) i = 1;  // byte order mark
    for (; i < text.length; i++) {
      var c = text[i];
      if (quoted) {
        if (c === '"') {
          if (text[i + 1] === '"') { field += '"'; i++; } else { quoted = false; }
        } else { field += c; }
      } else if (c === '"') { quoted = true; }
      else if (c === ",") { row.push(field); field = ""; }
      else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i++;
        row.push(field); field = "";
        if (row.length > 1 || row[0] !== "") rows.push(row);
        row = [];
      } else { field += c; }
    }
    if (field !== "" || row.length) { row.push(field); rows.push(row); }
    return rows;
  }

  function csvCell(value) {
    var text = value === null || value === undefined ? "" : String(value);
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function startBatch(section) {
    var form = document.getElementById("batch-form");
    var input = document.getElementById("batch-file");
    var explainBox = document.getElementById("batch-explain");
    var status = section.querySelector("[data-batch-status]");
    var bar = document.getElementById("batch-progress");
    var text = document.getElementById("batch-progress-text");
    var error = document.getElementById("batch-error");
    var done = document.getElementById("batch-done");
    var link = document.getElementById("batch-download");
    var url = section.getAttribute("data-batch-url");
    var environment = section.getAttribute("data-environment");
    var maxChunk = parseInt(section.getAttribute("data-max-chunk"), 10);
    var maxBytes = parseInt(section.getAttribute("data-max-bytes"), 10);
    var maxRows = parseInt(section.getAttribute("data-max-rows"), 10);

    function fail(message) {
      error.textContent = message;
      error.hidden = false;
      form.querySelector("button").disabled = false;
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      error.hidden = true; done.hidden = true;
      var file = input.files && input.files[0];
      if (!file) { fail("Choose a CSV file first."); return; }
      if (file.size > maxBytes) { fail("The file is larger than " + Math.round(maxBytes / 1048576) + " MB."); return; }
      form.querySelector("button").disabled = true;
      file.text().then(function (content) {
        var rows = parseCsv(content);
        if (rows.length < 2) { fail("The file needs a header row and at least one record."); return; }
        var columns = rows.shift();
        if (rows.length > maxRows) { fail("The file has " + rows.length + " records; at most " + maxRows + "."); return; }
        var results = [];
        var model = "";
        var explain = !!(explainBox && explainBox.checked);
        status.hidden = false;
        bar.value = 0;

        function next(start) {
          if (start >= rows.length) { finish(columns, rows, results, model, explain); return; }
          var chunk = rows.slice(start, start + maxChunk);
          fetch(url, {
            method: "POST", credentials: "same-origin",
            headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": csrfToken()},
            body: JSON.stringify({environment: environment, columns: columns, rows: chunk, explain: explain})
          }).then(function (r) {
            return r.json().then(function (body) { return {ok: r.ok, body: body}; });
          }).then(function (answer) {
            if (!answer.ok) { fail(answer.body.detail || answer.body.title || "The chunk was refused."); return; }
            model = answer.body.model ? answer.body.model.name + " v" + answer.body.model.version : model;
            results = results.concat(answer.body.rows);
            var percent = Math.round(100 * results.length / rows.length);
            bar.value = percent;
            bar.textContent = percent + "%";
            text.textContent = results.length + " of " + rows.length + " records scored";
            next(start + maxChunk);
          }).catch(function () { fail("The panel could not be reached; try again."); });
        }
        next(0);
      }, function () { fail("The file could not be read."); });
    });

    function finish(columns, rows, results, model, explain) {
      var classes = [];
      var reasonCount = 0;
      results.forEach(function (r) {
        Object.keys(r.probabilities || {}).forEach(function (c) { if (classes.indexOf(c) < 0) classes.push(c); });
        if (r.reasons) reasonCount = Math.max(reasonCount, r.reasons.length);
      });
      classes.sort();
      // The top reasons, as sentences the panel wrote (largest contribution first).
      var reasonColumns = [];
      for (var k = 1; explain && k <= reasonCount; k++) reasonColumns.push("reason_" + k);
      var header = columns.concat(["label"], classes.map(function (c) { return "p_" + c; }), reasonColumns, ["model", "error"]);
      var lines = [header.map(csvCell).join(",")];
      var failed = 0;
      rows.forEach(function (row, i) {
        var r = results[i] || {error: "not scored"};
        if (r.error) failed++;
        var probs = classes.map(function (c) { return r.probabilities && c in r.probabilities ? r.probabilities[c] : ""; });
        var reasons = reasonColumns.map(function (_, k) { return r.reasons && r.reasons[k] ? r.reasons[k] : ""; });
        lines.push(row.concat([r.label || ""], probs, reasons, [r.error ? "" : model, r.error || ""]).map(csvCell).join(","));
      });
      var blob = new Blob([lines.join("\r\n") + "\r\n"], {type: "text/csv"});
      if (link.href && link.href.indexOf("blob:") === 0) URL.revokeObjectURL(link.href);
      link.href = URL.createObjectURL(blob);
      var scored = rows.length - failed;
      text.textContent = scored + (scored === 1 ? " record" : " records") + " scored" +
        (failed ? ", " + failed + " refused (see the error column)" : "");
      done.hidden = false;
      form.querySelector("button").disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () { copy(button); });
    });
    var section = document.querySelector("[data-batch]");
    if (section) startBatch(section);
    // Take keyboard users to the first field the gateway refused.
    var invalid = document.querySelector('.score-form [aria-invalid="true"]');
    if (invalid) invalid.focus();
  });
})();
