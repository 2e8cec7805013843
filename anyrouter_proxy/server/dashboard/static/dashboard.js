/* AnyRouter dashboard: draws the charts of each page from the dashboard's JSON
   endpoints (same origin, session cookie). No build step; Chart.js is loaded before. */
"use strict";

(function () {
  const body = document.body;
  const base = body.dataset.base;
  const COLORS = ["#2456c7", "#e07b00", "#1b7f3b", "#b3261e", "#7a3fb8", "#00838f",
    "#8a5a00", "#c2185b", "#546e7a", "#2e7d32", "#5d4037", "#283593"];
  const charts = {};

  function getJSON(path, params) {
    const query = params ? "?" + new URLSearchParams(params).toString() : "";
    return fetch(base + path + query, {credentials: "same-origin",
      headers: {"Accept": "application/json"}}).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) {
          throw new Error((data.error && data.error.message) || response.statusText);
        }
        return data;
      });
    });
  }

  function draw(id, config) {
    const canvas = typeof id === "string" ? document.getElementById(id) : id;
    if (!canvas || typeof Chart === "undefined") { return; }
    const key = canvas.id || canvas.dataset.key;
    if (charts[key]) { charts[key].destroy(); }
    config.options = Object.assign({responsive: true, maintainAspectRatio: false,
      animation: false, plugins: {legend: {position: "bottom", labels: {boxWidth: 12}}}},
      config.options || {});
    charts[key] = new Chart(canvas, config);
  }

  function stacked(labels, groups) {
    const names = Object.keys(groups).sort();
    return {type: "bar", data: {labels: labels, datasets: names.map(function (name, i) {
      return {label: name, data: groups[name], backgroundColor: COLORS[i % COLORS.length]};
    })}, options: {scales: {x: {stacked: true}, y: {stacked: true, beginAtZero: true}}}};
  }

  function sumBuckets(groups, length) {
    const out = new Array(length).fill(0);
    Object.values(groups).forEach(function (values) {
      values.forEach(function (v, i) { out[i] += v; });
    });
    return out;
  }

  function number(value) { return Math.round(value).toLocaleString("en-US"); }

  /* USD in plain decimals (Chart.js would print 7.0E-5). */
  function usd(value) {
    const v = Number(value);
    if (!v) { return "0"; }
    const digits = Math.min(10, Math.max(2, 2 - Math.floor(Math.log10(Math.abs(v)))));
    return v.toFixed(digits);
  }

  /* -- Overview ------------------------------------------------------------------ */

  function overview() {
    const form = document.getElementById("chart-controls");
    const status = document.getElementById("chart-status");
    function load(event) {
      if (event) { event.preventDefault(); }
      const params = {};
      new FormData(form).forEach(function (value, name) { if (value) { params[name] = value; } });
      if (params.range !== "custom") { delete params.since; delete params.until; }
      status.textContent = "Loading…";
      getJSON("/api/chart", params).then(function (data) {
        const labels = data.labels;
        draw("chart-requests", stacked(labels, data.series.requests));
        draw("chart-tokens", stacked(labels, data.series.tokens));
        const cost = stacked(labels, data.series.cost);
        cost.options.scales.y.ticks = {callback: usd};
        draw("chart-cost", cost);
        const requests = sumBuckets(data.series.requests, labels.length);
        const errors = sumBuckets(data.series.errors, labels.length);
        draw("chart-errors", {type: "line", data: {labels: labels, datasets: [{
          label: "errors (%)", borderColor: COLORS[3], backgroundColor: COLORS[3],
          data: requests.map(function (n, i) { return n ? 100 * errors[i] / n : 0; })}]},
          options: {scales: {y: {beginAtZero: true, suggestedMax: 5}}}});
        const t = data.totals;
        document.getElementById("total-requests").textContent = number(t.requests);
        document.getElementById("total-tokens").textContent = number(t.tokens);
        document.getElementById("total-cost").textContent = t.cost.toFixed(6);
        document.getElementById("total-errors").textContent =
          t.requests ? (100 * t.errors / t.requests).toFixed(2) + " %" : "–";
        status.textContent = t.requests ? "" : "No requests in this range.";
      }).catch(function (error) { status.textContent = "Could not load: " + error.message; });
    }
    form.addEventListener("submit", load);
    function showDates() {
      const custom = form.elements.range.value === "custom";
      [form.elements.since, form.elements.until].forEach(function (input) {
        input.parentElement.hidden = !custom;
      });
      return custom;
    }
    showDates();
    form.elements.range.addEventListener("change", function () {
      const custom = showDates();
      if (custom && !form.elements.since.value) {
        const today = new Date().toISOString().slice(0, 10);
        form.elements.until.value = today;
        form.elements.since.value = new Date(Date.now() - 29 * 86400000).toISOString().slice(0, 10);
      }
    });
    load();
  }

  /* -- Providers ----------------------------------------------------------------- */

  function percentiles(providers, field) {
    const names = providers.map(function (p) { return p.id; });
    return {type: "bar", data: {labels: names, datasets: ["p50", "p90", "p99"].map(
      function (p, i) {
        return {label: p, backgroundColor: COLORS[i], data: providers.map(function (x) {
          return x[field] ? x[field][p] : null;
        })};
      })}, options: {scales: {y: {beginAtZero: true}}}};
  }

  function providers() {
    getJSON("/api/providers").then(function (data) {
      const list = data.data;
      draw("chart-latency", percentiles(list, "latency_ms"));
      draw("chart-ttft", percentiles(list, "ttft_ms"));
      draw("chart-tps", percentiles(list, "throughput_tps"));
      draw("chart-uptime", {type: "bar", data: {labels: list.map(function (p) { return p.id; }),
        datasets: ["5m", "30m", "1d"].map(function (w, i) {
          return {label: w, backgroundColor: COLORS[i], data: list.map(function (p) {
            return p.uptime[w]; })};
        })}, options: {scales: {y: {beginAtZero: true, max: 100}}}});
    });
  }

  /* -- Keys ---------------------------------------------------------------------- */

  function keys() {
    getJSON("/api/keys").then(function (data) {
      document.querySelectorAll("canvas.key-trend").forEach(function (canvas) {
        const spend = data.spend[canvas.dataset.key] || new Array(data.labels.length).fill(0);
        draw(canvas, {type: "line", data: {labels: data.labels, datasets: [{
          label: "USD", data: spend, borderColor: COLORS[0], backgroundColor: COLORS[0],
          pointRadius: 0, fill: false}]},
          options: {plugins: {legend: {display: false}}, scales: {x: {display: false},
            y: {beginAtZero: true, ticks: {callback: usd, maxTicksLimit: 3}}}}});
      });
    });
  }

  const pages = {overview: overview, providers: providers, keys: keys};
  if (pages[body.dataset.page]) { pages[body.dataset.page](); }
}());
