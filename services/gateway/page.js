// The operator's page: reads the gateway's /ops/api/* JSON every few seconds and draws it as tables and
// inline SVG. No framework, no build step, nothing loaded from elsewhere. Every value from a service is put
// in the page as text (textContent), never as HTML.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const KEY_STORE = "escalon-gateway-key";
  const $ = (id) => document.getElementById(id);
  let apiKey = sessionStorage.getItem(KEY_STORE) || "";
  let needKey = false;

  class KeyNeeded extends Error {}

  async function getJSON(path) {
    const headers = apiKey ? { Authorization: "Bearer " + apiKey } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      throw new KeyNeeded(path);
    }
    if (!response.ok) {
      throw new Error(path + ": HTTP " + response.status);
    }
    return response.json();
  }

  function el(tag, props, children) {
    const node = document.createElement(tag);
    Object.entries(props || {}).forEach(([name, value]) => {
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    });
    (children || []).forEach((child) => node.append(child));
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    Object.entries(attrs || {}).forEach(([name, value]) => node.setAttribute(name, String(value)));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function usd(value) {
    if (value === null || value === undefined) return "–";
    if (value === 0) return "$0";
    if (Math.abs(value) < 0.01) return "$" + value.toPrecision(3);
    return "$" + value.toFixed(2);
  }

  const pct = (value) => (value === null || value === undefined ? "–" : (100 * value).toFixed(1) + "%");

  function note(id, text, isError) {
    const node = $(id);
    node.textContent = text;
    node.classList.toggle("error", Boolean(isError));
  }

  // ---- sections ----------------------------------------------------------------------------------------

  function histogram(counts) {
    const width = 110, height = 26, gap = 1;
    const max = Math.max(1, ...counts);
    const bar = (width - gap * (counts.length - 1)) / counts.length;
    const chart = svg("svg", { class: "hist", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "confidence histogram: " + counts.join(" ") });
    chart.append(svg("line", { class: "base", x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5 }));
    counts.forEach((count, i) => {
      const h = count ? Math.max(2, ((height - 2) * count) / max) : 0;
      chart.append(svg("rect", { class: "bar", x: i * (bar + gap), y: height - 1 - h, width: bar, height: h }));
    });
    return chart;
  }

  function shareBar(share) {
    const fill = el("span");
    fill.style.width = Math.round(100 * (share || 0)) + "%";
    return el("span", { class: "share", title: pct(share) }, [fill]);
  }

  function renderRungs(rungs, traffic) {
    const rows = $("rung-rows");
    rows.replaceChildren();
    const stats = (traffic && traffic.rungs) || {};
    const seen = new Set();
    const listed = rungs ? rungs.rungs : [];
    const names = listed.map((r) => r.name).concat(Object.keys(stats).filter((n) => !listed.some((r) => r.name === n)));
    names.forEach((name) => {
      if (seen.has(name)) return;
      seen.add(name);
      const rung = listed.find((r) => r.name === name);
      const s = stats[name] || { share: 0, tried: 0, escalation_rate: null, spend_usd: 0,
        confidence_histogram: new Array(10).fill(0) };
      const health = rung
        ? el("span", { class: rung.healthy ? "health-ok" : "health-down", text: rung.healthy ? "ok" : "down",
            title: rung.status || "" })
        : el("span", { class: "note", text: "not served now" });
      const cells = [
        el("td", { text: name }),
        el("td", { text: rung ? rung.family + " · " + rung.backend : "–" }),
        el("td", { class: "num", text: rung ? usd(rung.input_usd_per_1m) + " / " + usd(rung.output_usd_per_1m) : "–" }),
        el("td", {}, [health, rung && !rung.healthy && rung.status ? el("div", { class: "note", text: rung.status }) : ""]),
        el("td", { class: "num" }, [pct(s.share), shareBar(s.share)]),
        el("td", { class: "num", text: String(s.tried) }),
        el("td", { class: "num", text: pct(s.escalation_rate) }),
        el("td", {}, [histogram(s.confidence_histogram)]),
        el("td", { class: "num", text: usd(s.spend_usd) }),
      ];
      rows.append(el("tr", { "data-rung": name }, cells));
    });
    if (!names.length) rows.append(el("tr", {}, [el("td", { colspan: 9, class: "note", text: "no rungs" })]));
  }

  function renderTotals(traffic) {
    const totals = $("totals");
    totals.replaceChildren();
    const items = [
      ["routes", String(traffic.routes)],
      ["spend", usd(traffic.total_cost_usd)],
      ["mean cost per query", usd(traffic.mean_cost_usd)],
      ["escalation rate", pct(traffic.escalation_rate)],
      ["errors", Object.entries(traffic.errors).map(([s, n]) => n + "× " + s).join(", ") || "none"],
    ];
    items.forEach(([label, value]) => totals.append(el("div", {}, [el("dt", { text: label }), el("dd", { text: value })])));
    const minutes = traffic.window_s / 60;
    note("traffic-scope", "Last " + minutes.toFixed(0) + " minutes of " + traffic.scope + "; at most " +
      traffic.max_routes + " routes are kept.");
    $("spend-caption").textContent = "Spend per " + (traffic.spend_bucket_s / 60).toFixed(0) +
      " min over the window (oldest left), max " + usd(Math.max(...traffic.spend_per_bucket_usd));
    drawSpend(traffic.spend_per_bucket_usd, traffic.spend_bucket_s);
  }

  function drawSpend(values, bucketSeconds) {
    const chart = $("spend-chart");
    chart.replaceChildren();
    const width = 640, height = 140, left = 8, bottom = 16;
    const max = Math.max(...values);
    const bar = (width - left) / values.length;
    chart.append(svg("line", { class: "axis", x1: left, x2: width, y1: height - bottom, y2: height - bottom }));
    values.forEach((v, i) => {
      const h = max > 0 ? ((height - bottom - 6) * v) / max : 0;
      if (h > 0) chart.append(svg("rect", { class: "bar", x: left + i * bar + 1, y: height - bottom - h,
        width: Math.max(1, bar - 2), height: h }));
    });
    chart.append(svg("text", { x: left, y: height - 3 }, "−" + Math.round(bucketSeconds * values.length / 60) + " min"));
    chart.append(svg("text", { x: width - 4, y: height - 3, "text-anchor": "end" }, "now"));
  }

  function renderJobs(jobs) {
    const rows = $("job-rows");
    rows.replaceChildren();
    if (jobs.error) {
      note("jobs-source", jobs.source + " did not answer: " + jobs.error, true);
    } else {
      note("jobs-source", "From " + jobs.source + " (the 20 newest).");
    }
    jobs.jobs.forEach((job) => {
      const bar = el("progress", { max: "1", value: String(job.progress), title: pct(job.progress) });
      rows.append(el("tr", { "data-job": job.job_id }, [
        el("td", { text: job.job_id }),
        el("td", { text: job.kind }),
        el("td", { text: job.state }),
        el("td", {}, [bar, " " + pct(job.progress)]),
        el("td", { class: "message", text: job.error || job.message }),
        el("td", { text: job.updated_at || "–" }),
      ]));
    });
    if (!jobs.jobs.length) rows.append(el("tr", {}, [el("td", { colspan: 6, class: "note", text: "no jobs" })]));
  }

  function renderFrontier(frontier) {
    const chart = $("frontier-chart");
    chart.replaceChildren();
    note("frontier-source", frontier.description + ". x: " + frontier.cost_label + ", y: " + frontier.quality_label +
      "; orange points are on the frontier." + (frontier.error ? " " + frontier.error : ""), Boolean(frontier.error));
    const width = 640, height = 340, left = 56, right = 20, top = 14, bottom = 40;
    const points = frontier.points;
    const axis = (attrs) => chart.append(svg("line", Object.assign({ class: "axis" }, attrs)));
    axis({ x1: left, x2: width - right, y1: height - bottom, y2: height - bottom });
    axis({ x1: left, x2: left, y1: top, y2: height - bottom });
    chart.append(svg("text", { x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle" }, frontier.cost_label));
    chart.append(svg("text", { x: 12, y: (top + height - bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(top + height - bottom) / 2})` }, "quality"));
    if (!points.length) {
      chart.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" },
        "no points yet: send requests with model escalon/economy, escalon/balanced, escalon/max-quality"));
      return;
    }
    const costs = points.map((p) => p.cost_usd);
    const positive = costs.filter((c) => c > 0);
    const useLog = positive.length === costs.length && Math.max(...costs) / Math.min(...costs) > 100;
    const f = useLog ? Math.log10 : (c) => c;
    let lo = useLog ? f(Math.min(...costs)) : 0;
    let hi = f(Math.max(...costs));
    if (hi - lo < 1e-12) { lo -= useLog ? 0.5 : 0; hi += useLog ? 0.5 : (hi || 1e-6); }
    const pad = (hi - lo) * 0.08;
    lo -= useLog ? pad : 0; hi += pad;
    const x = (c) => left + ((f(c) - lo) / (hi - lo)) * (width - left - right);
    const y = (q) => height - bottom - Math.min(1, Math.max(0, q)) * (height - top - bottom);
    [0, 0.25, 0.5, 0.75, 1].forEach((q) => {
      chart.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(q), y2: y(q) }));
      chart.append(svg("text", { x: left - 6, y: y(q) + 4, "text-anchor": "end" }, q.toFixed(2)));
    });
    [lo, (lo + hi) / 2, hi].forEach((v) => {
      const cost = useLog ? Math.pow(10, v) : v;
      chart.append(svg("text", { x: x(cost), y: height - bottom + 14, "text-anchor": "middle" }, usd(cost)));
    });
    const front = points.filter((p) => p.pareto).sort((a, b) => a.cost_usd - b.cost_usd);
    if (front.length > 1) {
      const path = front.map((p, i) => (i ? "L" : "M") + x(p.cost_usd).toFixed(1) + " " + y(p.quality).toFixed(1)).join(" ");
      chart.append(svg("path", { class: "frontier", d: path }));
    }
    const placed = [];  // label positions so far: a label that would overlap one moves down a line
    points.slice().sort((a, b) => a.cost_usd - b.cost_usd).forEach((p) => {
      const cx = x(p.cost_usd), cy = y(p.quality);
      const dot = svg("circle", { class: p.pareto ? "point pareto" : "point", cx, cy, r: 5 });
      dot.append(svg("title", {}, p.name + ": " + usd(p.cost_usd) + ", quality " + p.quality.toFixed(3) +
        (p.n ? " (n=" + p.n + ")" : "")));
      chart.append(dot);
      const anchor = cx > width - right - 140 ? "end" : "start";
      const lx = anchor === "end" ? cx - 8 : cx + 8;
      const step = cy > (top + height - bottom) / 2 ? -13 : 13;  // away from the nearer edge
      let ly = cy - 6;
      while (placed.some((q) => Math.abs(q.x - lx) < 130 && Math.abs(q.y - ly) < 12)) ly += step;
      placed.push({ x: lx, y: ly });
      chart.append(svg("text", { class: "label", x: lx, y: ly, "text-anchor": anchor }, p.name));
    });
  }

  // ---- refresh -----------------------------------------------------------------------------------------

  function showKeyForm() {
    needKey = true;
    $("key-form").hidden = false;
    note("updated", "Enter an API key to see this gateway's data.", true);
  }

  async function refresh() {
    const [rungs, jobs, traffic, frontier] = await Promise.allSettled(
      ["/ops/api/rungs", "/ops/api/jobs", "/ops/api/traffic", "/ops/api/frontier"].map(getJSON));
    const all = [rungs, jobs, traffic, frontier];
    if (all.some((r) => r.status === "rejected" && r.reason instanceof KeyNeeded)) {
      showKeyForm();
      return;
    }
    const failed = (r, id) => {
      if (r.status === "rejected") note(id, "Could not load: " + r.reason.message, true);
      return r.status === "rejected";
    };
    const rungData = rungs.status === "fulfilled" ? rungs.value : null;
    const trafficData = traffic.status === "fulfilled" ? traffic.value : null;
    if (!failed(rungs, "rungs-source")) {
      if (rungData.error) note("rungs-source", rungData.source + " did not answer: " + rungData.error, true);
      else note("rungs-source", "From " + rungData.source + "; traffic columns from this gateway's window.");
    }
    renderRungs(rungData, trafficData);
    if (!failed(traffic, "traffic-scope")) renderTotals(trafficData);
    if (!failed(jobs, "jobs-source")) renderJobs(jobs.value);
    if (!failed(frontier, "frontier-source")) renderFrontier(frontier.value);
    note("updated", "Updated " + new Date().toLocaleTimeString() + "; refreshes every " + REFRESH_MS / 1000 + " s.");
    document.body.dataset.loaded = "true";
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = $("key").value.trim();
    sessionStorage.setItem(KEY_STORE, apiKey);
    $("key-form").hidden = true;
    needKey = false;
    loop();
  });

  async function loop() {
    try {
      await refresh();
    } catch (error) {
      note("updated", "Refresh failed: " + error.message, true);
    }
    if (!needKey) setTimeout(loop, REFRESH_MS);
  }

  loop();
})();
