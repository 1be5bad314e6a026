// DistributedMedian dashboard: polls /dashboard.json once a second.
// The worker keeps no history for the page: the median history and the ingest
// rate are computed here, from the records and counts seen since the page opened.
"use strict";

(function () {
  const POLL_MS = 1000;
  const RATE_WINDOW_MS = 5000;
  const HISTORY_POINTS = 900;
  // Whole seconds at least, with room between ticks: the page polls once a second.
  const X_AXIS = { space: 90, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200] };

  const $ = (id) => document.getElementById(id);
  const history = { x: [], lower: [], median: [], upper: [] };
  const rates = { x: [], y: [] };
  let samples = []; // [now_ms, n] per poll, for the ingest rate
  let lastTs = null;
  let medianChart = null;
  let rateChart = null;

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e9 || a < 1e-3)) return v.toExponential(4);
    return v.toLocaleString("en-US", { maximumSignificantDigits: 6 });
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
      axes: [X_AXIS, { size: 70, values: (u, vals) => vals.map(fmt) }],
    }, [[], [], [], []], medianEl);

    const rateEl = $("rate-chart");
    rateChart = new uPlot({
      width: chartWidth(rateEl),
      height: 180,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max * 1.1, 1)] } },
      series: [{}, { label: "numbers/s", stroke: "#1f8f4e", width: 2, fill: "rgba(31,143,78,0.10)" }],
      axes: [X_AXIS, { size: 70, values: (u, vals) => vals.map(fmtInt) }],
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
    setText("median", fmt(r.median));
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

  function renderShards(doc) {
    const body = $("shards").tBodies[0];
    body.replaceChildren();
    let localN = 0;
    for (const s of doc.shards) {
      const age = s.last_signal_ms ? doc.now_ms - s.last_signal_ms : null;
      const stale = age !== null && age > doc.stale_after_ms;
      localN += s.n || 0;
      const tr = body.insertRow();
      tr.dataset.shard = String(s.shard);
      if (stale) tr.className = "stale";
      if (s.rejected_by_reason) {
        tr.title = Object.entries(s.rejected_by_reason).map(([k, v]) => k + ": " + v).join(", ");
      }
      const cells = [String(s.shard), fmtInt(s.n), fmt(s.median), fmtInt(s.last_offset), fmtInt(s.rejected),
                     fmtAge(age), stale ? "stale" : (s.n === null ? "loading" : "live")];
      cells.forEach((v, i) => {
        const td = tr.insertCell();
        td.textContent = v;
        if (i === cells.length - 1) td.className = stale ? "bad" : "ok";
      });
    }
    if (doc.shards.length === 0) {
      const td = body.insertRow().insertCell();
      td.colSpan = 7;
      td.className = "muted";
      td.textContent = "this worker owns no shard";
    }
    return localN;
  }

  function render(doc) {
    setText("topic", doc.topic);
    setText("partitions", String(doc.partitions));
    setText("stale-after", (doc.stale_after_ms / 1000).toFixed(0) + " s");
    setText("hosting", doc.aggregator_hosted ? "(also hosts the aggregator)" : "");
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
    setText("rate", rate === null ? "–" : fmtInt(rate));
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
      render(await response.json());
    } catch (err) {
      const pill = $("status");
      pill.textContent = "worker unreachable";
      pill.className = "pill pill-bad";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  makeCharts();
  poll();
})();
