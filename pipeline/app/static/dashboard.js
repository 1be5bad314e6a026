// DistributedMedian dashboard: polls /dashboard.json once a second.
// The worker keeps no history for the page: the median history and the ingest
// rate are computed here, from the records and counts seen since the page opened.
"use strict";

(function () {
  const POLL_MS = 1000;
  // Edge shards listed one by one (GET /shards' sources: stale first, then the longest unheard).
  const SOURCES_LISTED = 10;
  const RATE_WINDOW_MS = 5000;
  const HISTORY_POINTS = 900;
  // Whole seconds at least, with room between ticks: the page polls once a second.
  const X_AXIS = { space: 90, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200] };

  const $ = (id) => document.getElementById(id);
  const history = { x: [], lower: [], median: [], upper: [] };
  const rates = { x: [], y: [] };
  let samples = []; // [now_ms, n] per poll, for the ingest rate
  let lastTs = null;
  let sourcesSeen = 0; // edge shards in the last listing: /shards is asked while there were some
  let medianChart = null;
  let rateChart = null;

  // At most 6 significant digits: a data value of 9 digits must not overflow its card.
  // From a million up (and below 0.001) in scientific notation, never padded with zeros.
  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(5).replace(/\.?0+e/, "e").replace("e+", "e");
    return v.toLocaleString("en-US", { maximumSignificantDigits: 6 });
  }
  // Axis ticks: as many decimals as the tick step needs (so 0.2, 0.4 never both read 0),
  // and k/M/G from a thousand up.
  const SI = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  function decimalsFor(step) {
    for (let d = 0; d < 8; d++) {
      const scaled = step * 10 ** d;
      if (Math.abs(Math.round(scaled) - scaled) < 1e-6 * Math.max(1, scaled)) return d;
    }
    return 8;
  }
  function fmtTick(v, step, top) {
    if (v === null || v === undefined) return "";
    if (v === 0) return "0";
    if (top !== 0 && top < 1e-3) return v === 0 ? "0" : v.toExponential(2);
    const [scale, suffix] = SI.find(([s]) => top >= s) || [1, ""];
    return (v / scale).toFixed(decimalsFor(step / scale)) + suffix;
  }
  function axisValues(u, vals, axisIdx, space, incr) {
    const top = Math.max(...vals.map((v) => Math.abs(v)));
    // The step between the ticks drawn (custom splits may differ from uPlot's own increment).
    const step = vals.length > 1 ? Math.abs(vals[1] - vals[0]) : incr;
    return vals.map((v) => fmtTick(v, step, top));
  }
  // Ticks from 0 at a 1-2-5 step giving 3 to 6 of them, whatever the chart's height: uPlot's own
  // choice (a step whose ticks are 30 px apart) gave only "0, 2" on a flat rate of 3 when the
  // plot was a few pixels shorter.
  function splitsFromZero(u, axisIdx, min, max) {
    if (!(max > 0)) return [0];
    const raw = max / 5;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw * (1 - 1e-9));
    const ticks = [];
    for (let i = 0; i * step <= max * (1 + 1e-9); i++) ticks.push(Number((i * step).toPrecision(12)));
    return ticks;
  }
  // Wide enough for the longest tick label (uPlot's fixed size clips "123.470M").
  function axisSize(u, values) {
    if (!values) return 50;
    const longest = Math.max(0, ...values.map((v) => (v === null || v === undefined ? 0 : String(v).length)));
    return Math.max(50, Math.ceil(longest * 7.5) + 22);
  }
  function fmtRate(v) {
    if (v === null || v === undefined) return "–";
    return v >= 1000 ? Math.round(v).toLocaleString("en-US") : v.toLocaleString("en-US", { maximumSignificantDigits: 3 });
  }
  const fmtInt = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US"));
  function fmtBytes(b) {
    if (b < 1024) return b + " B";
    if (b < 1024 * 1024) return (b / 1024).toFixed(1) + " KiB";
    return (b / 1024 / 1024).toFixed(2) + " MiB";
  }
  function fmtAge(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return "just now";
    if (ms < 120000) return Math.round(ms / 1000) + " s ago";
    return Math.round(ms / 60000) + " min ago";
  }
  function setText(id, text) { $(id).textContent = text; }

  function chartWidth(el) { return Math.max(el.clientWidth - 4, 200); }

  function makeCharts() {
    const medianEl = $("median-chart");
    medianChart = new uPlot({
      width: chartWidth(medianEl),
      height: 260,
      // Labels only: values would show "–" until the pointer hovers the chart.
      legend: { show: true, live: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      series: [
        {},
        { label: "lower", stroke: "rgba(47,111,222,0.55)", width: 1, dash: [4, 4], value: (u, v) => fmt(v) },
        { label: "median", stroke: "#2f6fde", width: 2.5, value: (u, v) => fmt(v) },
        { label: "upper", stroke: "rgba(47,111,222,0.55)", width: 1, dash: [4, 4], value: (u, v) => fmt(v) },
      ],
      // The band: filled between upper (3) and lower (1).
      bands: [{ series: [3, 1], fill: "rgba(47,111,222,0.14)" }],
      axes: [X_AXIS, { size: axisSize, values: axisValues }],
    }, [[], [], [], []], medianEl);

    const rateEl = $("rate-chart");
    rateChart = new uPlot({
      width: chartWidth(rateEl),
      height: 180,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      // From 0, and a quarter above the highest rate: a flat rate is a line at 80% height,
      // not on the chart's edge; no rate yet is a line on 0 of [0, 1].
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.25 : 1] } },
      series: [{}, { label: "numbers/s", stroke: "#1f8f4e", width: 2, fill: "rgba(31,143,78,0.10)" }],
      axes: [X_AXIS, { size: axisSize, values: axisValues, splits: splitsFromZero }],
    }, [[], []], rateEl);

    window.addEventListener("resize", () => {
      medianChart.setSize({ width: chartWidth(medianEl), height: 260 });
      rateChart.setSize({ width: chartWidth(rateEl), height: 180 });
    });
  }

  function ingestRate(nowMs, n) {
    samples.push([nowMs, n]);
    // Keep the window plus the one sample before it, so the rate spans the full window.
    while (samples.length > 2 && samples[1][0] <= nowMs - RATE_WINDOW_MS) samples.shift();
    const [t0, n0] = samples[0];
    if (nowMs - t0 < 500) return null;
    return Math.max(0, ((n - n0) * 1000) / (nowMs - t0));
  }

  function push(series, values, cap) {
    values.forEach((v, i) => series[i].push(v));
    if (series[0].length > cap) series.forEach((s) => s.shift());
  }

  function renderRecord(doc) {
    const r = doc.record;
    if (!r) {
      setText("median", "no data yet");
      $("median").dataset.value = "";
      return;
    }
    const shown = fmt(r.median);
    setText("median", shown);
    // Smaller type for longer text, so it stays inside its card (which also wraps it).
    $("median").classList.toggle("long", shown.length > 8);
    $("median").classList.toggle("longer", shown.length > 11);
    $("median").dataset.value = r.median === null ? "" : String(r.median);
    setText("band", "[" + fmt(r.lower) + ", " + fmt(r.upper) + "]");
    setText("rank-bound", "±" + (r.rank_error + (r.theta || 0)).toFixed(4));
    setText("source", doc.record_source === "aggregator" ? "this worker's aggregator" : "the medians topic");
    setText("n", fmtInt(r.n));
    $("n").dataset.value = String(r.n);
    setText("pending", fmtInt(r.pending));
    setText("shard-count", String(r.shards));

    const body = $("quantiles").tBodies[0];
    body.replaceChildren();
    const qs = Object.entries(r.quantiles).sort((a, b) => Number(a[0]) - Number(b[0]));
    for (const [q, e] of qs) {
      const tr = body.insertRow();
      for (const v of [q, fmt(e.value), fmt(e.lower), fmt(e.upper), "±" + e.rank_bound.toFixed(4)]) {
        tr.insertCell().textContent = v;
      }
    }
    if (r.ts !== lastTs) {
      lastTs = r.ts;
      push([history.x, history.lower, history.median, history.upper],
           [r.ts / 1000, r.lower, r.median, r.upper], HISTORY_POINTS);
      medianChart.setData([history.x, history.lower, history.median, history.upper]);
    }
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 120) return fmt(Number(s.toPrecision(3))) + " s";
    if (s < 7200) return fmt(Number((s / 60).toPrecision(3))) + " min";
    return fmt(Number((s / 3600).toPrecision(3))) + " h";
  }

  function renderHistogram(id, bins, label) {
    const el = $(id);
    el.replaceChildren();
    const most = Math.max(1, ...bins.map((b) => b.count));
    for (const b of bins) {
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.height = (b.count ? Math.max(2, (100 * b.count) / most) : 0) + "%";
      bar.title = label(b.lo) + " – " + label(b.hi) + ": " + fmtInt(b.count) + (b.count === 1 ? " shard" : " shards");
      el.appendChild(bar);
    }
    setText(id + "-lo", bins.length ? label(bins[0].lo) : "");
    setText(id + "-hi", bins.length ? label(bins[bins.length - 1].hi) : "no shard yet");
  }

  function renderDistribution(id, dist, label) {
    const cells = $(id).cells;
    ["min", "p50", "p90", "max"].forEach((k, i) => { cells[i + 1].textContent = dist ? label(dist[k]) : "–"; });
  }

  function renderShards(doc) {
    const view = doc.shards;
    const sum = view.summary;
    setText("shards-known", fmtInt(sum.shards));
    setText("shards-owned", fmtInt(sum.owned_here));
    setText("shards-stale", fmtInt(sum.stale));
    $("shards-stale").classList.toggle("bad", sum.stale > 0);
    setText("shards-unknown", fmtInt(sum.unknown));
    setText("shards-n", fmtInt(sum.n_total));
    $("shards-n").dataset.value = String(sum.n_total);
    setText("shards-lag", sum.lag_total === null ? "–" : fmtInt(sum.lag_total));
    renderHistogram("hist-n", view.histograms.n, fmtInt);
    renderHistogram("hist-age", view.histograms.age_s, fmtSeconds);
    renderDistribution("dist-n", sum.n, fmtInt);
    renderDistribution("dist-age", sum.age_s, fmtSeconds);

    const body = $("shards").tBodies[0];
    body.replaceChildren();
    for (const s of view.worst) {
      const tr = body.insertRow();
      tr.dataset.shard = String(s.shard);
      if (s.status === "stale") tr.className = "stale";
      const median = s.median ? s.median.value : null;
      const age = s.last_snapshot_age_s === null ? null : s.last_snapshot_age_s * 1000;
      const cells = [String(s.shard), fmtInt(s.n), fmt(median), fmtInt(s.last_offset), fmtInt(s.rejected),
                     s.lag === null ? "–" : fmtInt(s.lag), fmtAge(age), s.status];
      cells.forEach((v, i) => {
        const td = tr.insertCell();
        td.textContent = v;
        if (i === cells.length - 1) td.className = { stale: "bad", live: "ok" }[s.status] || "muted";
      });
    }
    if (view.worst.length === 0) {
      const td = body.insertRow().insertCell();
      td.colSpan = 8;
      td.className = "muted";
      td.textContent = doc.aggregator_hosted ? "no shard has sent a snapshot yet" : "this worker owns no shard";
    }
    return view.owned_n;
  }

  // Only the aggregator's worker knows each edge shard (/shards' sources); any worker has the
  // record's counts. /shards is asked only when there are edge shards, not on every poll.
  async function pollSources(doc) {
    const r = doc.record;
    const inRecord = r && r.sources ? r.sources : 0;
    let listing = null;
    if (doc.aggregator_hosted && (inRecord > 0 || sourcesSeen > 0)) {
      try {
        const response = await fetch("/shards?limit=" + SOURCES_LISTED, { cache: "no-store" });
        if (response.ok) listing = (await response.json()).sources;
      } catch (err) {
        listing = null; // the next poll asks again; the record's counts are shown meanwhile
      }
    }
    renderSources(doc, listing && listing.complete ? listing : null);
  }

  function renderSources(doc, listing) {
    const r = doc.record;
    const count = listing ? listing.summary.count : (r && r.sources) || 0;
    const stale = listing ? listing.summary.stale : (r && r.stale_sources) || 0;
    const rows = listing ? listing.rows : [];
    sourcesSeen = listing ? Math.max(count, rows.length) : count;
    const shown = count > 0 || rows.length > 0;
    $("sources-tile").hidden = !shown;
    $("sources-card").hidden = !shown;
    if (!shown) return;
    setText("sources-count", fmtInt(count));
    setText("sources-stale", fmtInt(stale));
    setText("sources-after", (doc.stale_after_ms / 1000).toFixed(0) + " s");
    $("sources-tile").classList.toggle("bad", stale > 0);
    $("sources-stale").classList.toggle("bad", stale > 0);
    const sum = listing ? listing.summary : null;
    setText("sources-summary", sum
      ? fmtInt(sum.count) + (sum.count === 1 ? " source" : " sources") + " in the estimate, " + fmtInt(sum.stale) +
        " stale, " + fmtInt(sum.n_total) + " numbers, " + fmtInt(sum.pending) + " pending"
      : "as the latest record counts them");

    const body = $("sources-table").tBodies[0];
    body.replaceChildren();
    for (const s of rows) {
      const tr = body.insertRow();
      tr.dataset.source = s.name;
      if (s.status === "stale") tr.className = "stale";
      const ago = (seconds) => fmtAge(seconds === null ? null : seconds * 1000);
      const cells = [s.name, fmtInt(s.n), fmt(s.median ? s.median.value : null), fmtInt(s.seq), fmtInt(s.rejected),
                     s.k === null ? "–" : String(s.k), ago(s.last_snapshot_age_s), ago(s.heard_age_s), s.status];
      cells.forEach((v, i) => {
        const td = tr.insertCell();
        td.textContent = v;
        if (i === cells.length - 1) td.className = s.status === "stale" ? "bad" : "ok";
      });
    }
    if (rows.length === 0) {
      const td = body.insertRow().insertCell();
      td.colSpan = 9;
      td.className = "muted";
      td.textContent = doc.aggregator_hosted ? "the list is not available now; asking again"
        : "this worker does not host the aggregator: its worker lists each source";
    }
  }

  function render(doc) {
    setText("topic", doc.topic);
    setText("partitions", String(doc.partitions));
    setText("stale-after", (doc.stale_after_ms / 1000).toFixed(0) + " s");
    setText("hosting", doc.shards.complete ? "every shard, as this worker's aggregator sees them"
      : "the shards this worker owns");
    renderRecord(doc);
    const localN = renderShards(doc);

    const stale = doc.stale_shards;
    setText("stale", String(stale));
    $("stale-tile").classList.toggle("bad", stale > 0);
    const banner = $("stale-banner");
    banner.hidden = stale === 0;
    banner.textContent = stale === 0 ? "" : stale + (stale === 1 ? " shard is" : " shards are") +
      " stale: not heard from for more than " + (doc.stale_after_ms / 1000).toFixed(0) +
      " s (its worker is down or its input paused).";

    const sent = doc.sent;
    setText("bytes-sent", fmtBytes(sent.snapshot_bytes));
    setText("snaps-sent", fmtInt(sent.snapshots));
    setText("heartbeats", fmtInt(sent.heartbeats));
    setText("bytes-per", localN > 0 ? fmt(sent.snapshot_bytes / localN) : "–");
    setText("snaps-per", localN > 0 ? fmt((sent.snapshots * 1000) / localN) : "–");

    const n = doc.record ? doc.record.n : 0;
    const rate = ingestRate(doc.now_ms, n);
    setText("rate", fmtRate(rate));
    if (rate !== null) {
      push([rates.x, rates.y], [doc.now_ms / 1000, rate], HISTORY_POINTS);
      rateChart.setData([rates.x, rates.y]);
    }

    const pill = $("status");
    pill.textContent = doc.record ? "live" : "waiting for data";
    pill.className = "pill " + (doc.record ? "pill-live" : "pill-wait");
    setText("updated", doc.record ? "record " + fmtAge(doc.now_ms - doc.record.ts) : "");
  }

  async function poll() {
    try {
      const response = await fetch("/dashboard.json", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const doc = await response.json();
      render(doc);
      await pollSources(doc);
    } catch (err) {
      const pill = $("status");
      pill.textContent = "worker unreachable";
      pill.className = "pill pill-bad";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  makeCharts();
  // The charts, for a console or a test to read (their drawn tick labels are on a canvas).
  window.dmedianDashboard = Object.freeze({ charts: Object.freeze({ median: medianChart, rate: rateChart }) });
  poll();
})();
