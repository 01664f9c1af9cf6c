// The status page: polls the /v1 API once a second and renders it. No data is embedded in the
// page; with a token configured every call sends it (kept in sessionStorage) and a 401 shows
// the login prompt again. Loaded first (not deferred) so the error collector sees everything.
"use strict";

// Errors are counted on <html data-errors>, and their messages kept, for people and for tests.
(function () {
  var errors = [];
  function record(message) {
    errors.push(String(message));
    document.documentElement.setAttribute("data-errors", String(errors.length));
    document.documentElement.setAttribute("data-error-messages", errors.join("\n"));
  }
  document.documentElement.setAttribute("data-errors", "0");
  window.addEventListener("error", function (e) {
    record(e.message || (e.target && e.target.src ? "cannot load " + e.target.src : "error"));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { record(e.reason); });
})();

(function () {
  var TOKEN_KEY = "pgai-trigger-token";
  var HISTORY = 600; // samples kept for the chart: ten minutes at one a second
  var samples = [[], [], [], [], []]; // time (s), P50 ms, P99 ms, rows/min, queue depth
  var chart = null;
  var timer = null;
  var inFlight = false;
  var polls = 0;

  function $(id) { return document.getElementById(id); }

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  function Unauthorized() { this.message = "unauthorized"; }

  // fetch with the token; JSON answer, 401 as Unauthorized, other errors with the API's message.
  function api(path, options) {
    options = options || {};
    var headers = { "Accept": "application/json" };
    if (options.body !== undefined) { headers["Content-Type"] = "application/json"; }
    if (token()) { headers["Authorization"] = "Bearer " + token(); }
    return fetch(path, {
      method: options.method || "GET",
      headers: headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      cache: "no-store"
    }).then(function (r) {
      if (r.status === 401) { throw new Unauthorized(); }
      return r.json().catch(function () { return null; }).then(function (body) {
        if (!r.ok) {
          var m = body && body.error && body.error.message;
          throw new Error(path + ": " + r.status + (m ? " " + m : ""));
        }
        return body;
      });
    });
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) { Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); }); }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }

  function num(v, digits) {
    if (v === null || v === undefined || isNaN(v)) { return "–"; }
    return Number(v).toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 0 : digits });
  }
  function ms(v) { return v === null || v === undefined ? "–" : num(v, v < 10 ? 1 : 0) + " ms"; }
  function secs(v) {
    if (v === null || v === undefined) { return "–"; }
    if (v < 60) { return num(v, 1) + " s"; }
    if (v < 3600) { return num(v / 60, 1) + " min"; }
    return num(v / 3600, 1) + " h";
  }

  function show(state) {
    document.body.setAttribute("data-state", state);
    $("login").hidden = state !== "login";
    $("app").hidden = state !== "app";
    $("logout").hidden = !(state === "app" && token());
  }

  function setOverall(word, cls) {
    var b = $("overall");
    b.textContent = word;
    b.className = "badge " + cls;
  }

  function toLogin(message) {
    stop();
    show("login");
    setOverall("Locked", "warn");
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  function stop() { if (timer) { clearInterval(timer); timer = null; } }

  function start() {
    show("app");
    poll();
    if (!timer) { timer = setInterval(poll, 1000); }
  }

  // One round: stats (health, chart), vectorizers, failed rows.
  function poll() {
    if (inFlight) { return; }
    inFlight = true;
    Promise.all([api("/v1/stats"), api("/v1/vectorizers"), api("/v1/failed?limit=50")])
      .then(function (r) {
        polls += 1;
        document.body.setAttribute("data-polls", String(polls));
        $("poll-error").textContent = "";
        renderHealth(r[0]);
        renderVectorizers(r[1].vectorizers || []);
        renderFailed(r[2].failed || [], r[0].failed);
        addSample(r[0]);
      })
      .catch(function (e) {
        if (e instanceof Unauthorized) {
          var had = token();
          sessionStorage.removeItem(TOKEN_KEY);
          toLogin(had ? "The token was refused." : "");
          return;
        }
        setOverall("Unreachable", "bad");
        $("poll-error").textContent = "Cannot read the status: " + e.message;
      })
      .then(function () { inFlight = false; });
  }

  function healthItem(dl, label, word, cls, key) {
    var d = el("div", { "data-key": key });
    d.appendChild(el("dt", null, label));
    d.appendChild(el("dd", { "class": cls }, word));
    dl.appendChild(d);
  }

  function renderHealth(s) {
    var dl = $("health");
    dl.textContent = "";
    var d = s.daemon;
    var worst = "ok";
    function note(cls) { if (cls === "bad" || (cls === "warn" && worst === "ok")) { worst = cls; } }
    if (d) {
      var listener = !d.listener_connected ? ["disconnected", "bad"] :
        d.listener_degraded ? ["degraded (polling)", "warn"] : ["connected", "ok"];
      if (s.mode && s.mode !== "immediate" && !d.listener_connected) { listener = ["not used (" + s.mode + ")", "ok"]; }
      note(listener[1]);
      healthItem(dl, "Listener", listener[0], listener[1], "listener");
      var worker = d.worker_connected ? ["connected", "ok"] : ["disconnected", "bad"];
      note(worker[1]);
      healthItem(dl, "Worker", worker[0], worker[1], "worker");
      var provider = d.provider_paused ? ["paused (backing off)", "warn"] : ["running", "ok"];
      note(provider[1]);
      healthItem(dl, "Provider", provider[0], provider[1], "provider");
      healthItem(dl, "Uptime", secs(d.uptime_secs), "", "uptime");
      healthItem(dl, "Embedded by this daemon", num(d.processed), "", "processed");
      if (d.last_error) { healthItem(dl, "Last error", d.last_error, "bad", "last-error"); }
    } else {
      note("warn");
      healthItem(dl, "Daemon", "not running in this process", "warn", "daemon");
    }
    healthItem(dl, "Mode", s.mode, "", "mode");
    healthItem(dl, "Queue depth", num(s.queue_depth), s.queue_depth > 0 ? "warn" : "", "queue");
    healthItem(dl, "Oldest pending", secs(s.oldest_pending_secs), "", "oldest");
    healthItem(dl, "Failed rows", num(s.failed), s.failed > 0 ? "bad" : "ok", "failed");
    if (s.failed > 0) { note("warn"); }
    setOverall(worst === "ok" ? "Healthy" : worst === "warn" ? "Degraded" : "Down", worst);
  }

  function renderVectorizers(list) {
    var body = $("vectorizers").tBodies[0];
    body.textContent = "";
    list.forEach(function (v) {
      var st = v.status || {};
      var word = !v.status ? ["no status", "warn"] : st.failed > 0 ? ["failures", "bad"] :
        (st.pending + st.processing) > 0 ? ["catching up", "warn"] : ["up to date", "ok"];
      var tr = el("tr", { "data-name": v.name });
      function cell(label, cls, text) { tr.appendChild(el("td", { "data-label": label, "class": cls }, text)); }
      cell("Name", "name", v.name + (st.destination ? " (" + st.destination + ")" : ""));
      cell("Status", "status " + word[1], word[0]);
      cell("Rows", "rows", num(st.rows));
      cell("Embedded", "embedded", num(st.embedded));
      cell("Pending", "pending", num(st.pending));
      cell("Processing", "processing", num(st.processing));
      cell("Failed", "failed" + (st.failed > 0 ? " bad" : ""), num(st.failed));
      cell("Coverage", "coverage", st.coverage_pct === null || st.coverage_pct === undefined ? "–" : num(st.coverage_pct, 1) + " %");
      cell("Lag", "lag", secs(st.lag_secs));
      cell("Per minute", "throughput", num(st.throughput_per_min));
      cell("P50", "p50", ms(st.latency_p50_ms));
      cell("P99", "p99", ms(st.latency_p99_ms));
      body.appendChild(tr);
      if (st.last_error) {
        var er = el("tr", { "class": "error-row" });
        er.appendChild(el("td", { "colspan": "12", "class": "err", "data-label": "Last error" }, st.last_error));
        body.appendChild(er);
      }
    });
    if (!list.length) {
      var tr = el("tr");
      tr.appendChild(el("td", { "colspan": "12" }, "No vectorizers."));
      body.appendChild(tr);
    }
  }

  function renderFailed(rows, total) {
    var ul = $("failed-list");
    ul.textContent = "";
    $("failed-count").textContent = total > rows.length ? "(" + rows.length + " of " + num(total) + ")" : "(" + rows.length + ")";
    $("retry").disabled = rows.length === 0;
    rows.forEach(function (r) {
      var li = el("li", { "data-id": r.id });
      li.appendChild(el("span", { "class": "id" }, r.id));
      li.appendChild(document.createTextNode(" — failed after " + r.retry_count + " attempt" + (r.retry_count === 1 ? "" : "s") + ": "));
      li.appendChild(el("span", { "class": "reason" }, r.last_error || "no error recorded"));
      ul.appendChild(li);
    });
    if (!rows.length) { ul.appendChild(el("li", { "class": "none" }, "No failed rows.")); }
  }

  function addSample(s) {
    var lat = (s.daemon && s.daemon.latency_ms && s.daemon.latency_ms.samples) ? s.daemon.latency_ms : s.latency_ms || {};
    var row = [Date.now() / 1000, nz(lat.p50), nz(lat.p99), s.throughput_per_minute, s.queue_depth];
    for (var i = 0; i < samples.length; i++) {
      samples[i].push(row[i]);
      if (samples[i].length > HISTORY) { samples[i].shift(); }
    }
    $("chart").setAttribute("data-samples", String(samples[0].length));
    drawChart();
  }
  function nz(v) { return v === undefined ? null : v; }

  function chartSize() { return { width: Math.max(260, $("chart").clientWidth), height: 280 }; }

  function drawChart() {
    if (typeof window.uPlot !== "function") { return; }
    if (!chart) {
      var size = chartSize();
      chart = new window.uPlot({
        width: size.width,
        height: size.height,
        scales: { x: { time: true }, ms: { auto: true }, rows: { auto: true } },
        series: [
          {},
          { label: "Latency P50", scale: "ms", stroke: "#1a73e8", width: 2, value: function (u, v) { return ms(v); } },
          { label: "Latency P99", scale: "ms", stroke: "#9334e6", width: 1, dash: [6, 4], value: function (u, v) { return ms(v); } },
          { label: "Rows/min", scale: "rows", stroke: "#17723a", width: 2 },
          { label: "Queue depth", scale: "rows", stroke: "#b3261e", width: 2 }
        ],
        axes: [
          {},
          { scale: "ms", label: "ms" },
          { scale: "rows", side: 1, label: "rows", grid: { show: false } }
        ]
      }, samples, $("chart"));
      window.addEventListener("resize", function () { chart.setSize(chartSize()); });
    } else {
      chart.setData(samples);
    }
  }

  function retry() {
    var b = $("retry");
    b.disabled = true;
    $("retry-result").textContent = "Re-queuing…";
    api("/v1/failed/retry", { method: "POST" }).then(function (r) {
      $("retry-result").textContent = "Re-queued " + r.requeued + " row" + (r.requeued === 1 ? "" : "s") + ".";
      $("retry-result").setAttribute("data-requeued", String(r.requeued));
      poll();
    }).catch(function (e) {
      if (e instanceof Unauthorized) { toLogin("The token was refused."); return; }
      $("retry-result").textContent = "Could not re-queue: " + e.message;
    });
  }

  function search(ev) {
    ev.preventDefault();
    var q = $("search-q").value.trim();
    var out = $("search-results");
    if (!q) { return; }
    $("search-status").textContent = "Searching…";
    api("/v1/search", { method: "POST", body: { query: q, k: 10 } }).then(function (r) {
      out.textContent = "";
      var results = r.results || [];
      $("search-status").textContent = results.length + " nearest row" + (results.length === 1 ? "" : "s") + " (score: cosine similarity)";
      results.forEach(function (h) {
        var li = el("li", { "data-id": h.id });
        li.appendChild(el("span", { "class": "score" }, Number(h.score).toFixed(3)));
        li.appendChild(document.createTextNode(" "));
        li.appendChild(el("span", { "class": "id" }, h.id));
        li.appendChild(document.createTextNode(" — " + h.content));
        out.appendChild(li);
      });
    }).catch(function (e) {
      if (e instanceof Unauthorized) { toLogin("The token was refused."); return; }
      $("search-status").textContent = "Search failed: " + e.message;
    });
  }

  function login(ev) {
    ev.preventDefault();
    var t = $("token").value.trim();
    if (!t) { return; }
    sessionStorage.setItem(TOKEN_KEY, t);
    $("token").value = "";
    $("login-error").textContent = "Checking…";
    api("/v1/stats").then(function () { $("login-error").textContent = ""; start(); }).catch(function (e) {
      if (e instanceof Unauthorized) {
        sessionStorage.removeItem(TOKEN_KEY);
        $("login-error").textContent = "The token was refused.";
      } else {
        $("login-error").textContent = "Cannot reach the server: " + e.message;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("login-form").addEventListener("submit", login);
    $("search-form").addEventListener("submit", search);
    $("retry").addEventListener("click", retry);
    $("logout").addEventListener("click", function () {
      sessionStorage.removeItem(TOKEN_KEY);
      toLogin("");
    });
    // Nothing is shown until the server says whether a token is needed.
    api("/v1/stats").then(start).catch(function (e) {
      if (e instanceof Unauthorized) {
        var had = token();
        sessionStorage.removeItem(TOKEN_KEY);
        toLogin(had ? "The saved token was refused." : "");
      } else {
        show("app");
        setOverall("Unreachable", "bad");
        $("poll-error").textContent = "Cannot read the status: " + e.message;
        if (!timer) { timer = setInterval(poll, 1000); }
      }
    });
  });
})();
