"""Prometheus metrics of one worker, read from the live services at scrape time.

One :class:`prometheus_client.CollectorRegistry` per app (never the global one:
several apps may live in one process, e.g. in tests) holding one custom
collector. Nothing is counted per number: the services already keep the counts
(shard states, dead-letter counters, snapshot counters, the aggregator's merge
time), and a scrape reads them.

Every name starts with ``dmedian_``; counters end in ``_total``, durations and ages
are in seconds. The served estimate is on every worker (the newest ``medians``
record it has); the aggregator's view of every shard on the worker that hosts it.

At thousands of shards, per-shard series would be most of what Prometheus stores,
so their count is bounded: ``metrics_shard_series`` (default 20) keeps the series
of the worst shards only (stale first, then the oldest snapshot, then the most
lag) and of the partitions with the most consumer lag; 0 keeps none, -1 all. The
totals, counts and distributions over every shard are always there. The worst
are picked with a bounded heap, not a sort of every shard, on each scrape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from pipeline.app.shard_rows import consumer_lag, gather_rows
from pipeline.core.api_answers import newest_record
from pipeline.core.shard_listing import ShardRow, shards_summary, worst, worst_first

if TYPE_CHECKING:
    from pipeline.app.factory import Pipeline

__all__ = ["CONTENT_TYPE", "PipelineCollector", "WorkerMetrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format that :func:`prometheus_client.generate_latest` writes."""


class PipelineCollector(Collector):
    """Reads one worker's services when scraped."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: collect() reads live services, which must
        # not run at registration (the app has not started then).
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family, from the services' state now."""
        now_ms = int(time.time() * 1000)
        lags = consumer_lag(self._pipeline.app)
        rows, _ = gather_rows(self._pipeline, now_ms, lags)
        limit = self._pipeline.settings.metrics_shard_series
        shown = _shown(rows, limit, now_ms)
        yield GaugeMetricFamily(
            "dmedian_metrics_shard_series", "The most shards with per-shard series (-1: all)", value=limit
        )
        yield from self._shard_metrics(shown, now_ms)
        yield from self._shard_distributions(rows, now_ms)
        yield from self._aggregator_metrics(shown, now_ms)
        yield from self._estimate_metrics(now_ms)
        yield from _lag_metrics(lags, limit)

    def _shard_metrics(self, shown: Callable[[int], bool], now_ms: int) -> Iterator[Metric]:
        shards = self._pipeline.shards
        ingested = CounterMetricFamily(
            "dmedian_numbers_ingested", "Numbers in each owned shard's state (all time)", labels=["shard"]
        )
        owned_n = 0
        owned = shards.owned
        for shard in owned:
            state = shards.local_state(shard)
            if state is not None:
                owned_n += state.n
                if shown(shard):
                    ingested.add_metric([str(shard)], state.n)
        yield ingested
        yield GaugeMetricFamily("dmedian_owned_shards", "Shards this worker owns", value=len(owned))
        yield GaugeMetricFamily(
            "dmedian_owned_numbers", "Numbers in the states of the shards this worker owns (a sum)", value=owned_n
        )
        rejected = CounterMetricFamily(
            "dmedian_rejected", "Rejected messages or elements sent to dead-letters by this worker", labels=["reason"]
        )
        for reason, count in sorted(self._pipeline.dead_letters.counts.items()):
            rejected.add_metric([reason], count)
        yield rejected
        sent = CounterMetricFamily("dmedian_snapshots_sent", "Snapshots this worker sent, per shard", labels=["shard"])
        sent_bytes = CounterMetricFamily(
            "dmedian_snapshot_sent_bytes", "Bytes of snapshots this worker sent, per shard", labels=["shard"]
        )
        for shard, count in shards.snapshots_sent_by_shard.items():
            if shown(shard):
                sent.add_metric([str(shard)], count)
                sent_bytes.add_metric([str(shard)], shards.snapshot_bytes_by_shard.get(shard, 0))
        yield sent
        yield sent_bytes
        yield CounterMetricFamily(
            "dmedian_worker_snapshots_sent", "Snapshots this worker sent, all shards", value=shards.snapshots_sent
        )
        yield CounterMetricFamily(
            "dmedian_worker_snapshot_sent_bytes",
            "Bytes of snapshots this worker sent, all shards",
            value=shards.snapshot_bytes_sent,
        )
        yield CounterMetricFamily(
            "dmedian_heartbeats_sent", "Progress messages this worker sent", value=shards.heartbeats_sent
        )
        if not self._pipeline.aggregator.hosted:
            # The aggregator's view, below, is the complete one; here only what this worker sent.
            age = GaugeMetricFamily(
                "dmedian_snapshot_age_seconds", "Seconds since each shard's last snapshot", labels=["shard"]
            )
            for shard in owned:
                sent_ms = shards.last_snapshot_ms_by_shard.get(shard)
                if sent_ms is not None and shown(shard):
                    age.add_metric([str(shard)], max(now_ms - sent_ms, 0) / 1000)
            yield age

    def _shard_distributions(self, rows: list[ShardRow], now_ms: int) -> Iterator[Metric]:
        # Over every shard this worker knows (all of them on the aggregator's worker), whatever the cap.
        summary = shards_summary(rows, now_ms)
        yield GaugeMetricFamily("dmedian_shards_known", "Shards this worker knows of", value=summary["shards"])
        yield GaugeMetricFamily(
            "dmedian_shards_stale", "Of them, silent for over two heartbeats", value=summary["stale"]
        )
        for name, documentation, key in [
            ("dmedian_shard_numbers", "Numbers per shard across the known shards", "n"),
            ("dmedian_shard_snapshot_age_seconds", "Snapshot age across the known shards", "age_s"),
        ]:
            family = GaugeMetricFamily(name, documentation + ": min (0), median, p90, max (1)", labels=["quantile"])
            for quantile, field in _DISTRIBUTION_LABELS:
                if summary[key] is not None:
                    family.add_metric([quantile], summary[key][field])
            yield family

    def _aggregator_metrics(self, shown: Callable[[int], bool], now_ms: int) -> Iterator[Metric]:
        aggregator = self._pipeline.aggregator
        yield GaugeMetricFamily(
            "dmedian_aggregator_hosted", "1 when this worker hosts the aggregator", value=int(aggregator.hosted)
        )
        yield SummaryMetricFamily(
            "dmedian_merge_seconds",
            "Time to merge the shards' snapshots and evaluate a record's quantiles",
            count_value=aggregator.merges,
            sum_value=aggregator.merge_seconds,
        )
        estimator = aggregator.estimator
        if estimator is None:
            return
        stale = set(aggregator.liveness.stale(now_ms, 2 * self._pipeline.settings.heartbeat_ms))
        age = GaugeMetricFamily(
            "dmedian_snapshot_age_seconds", "Seconds since each shard's last snapshot", labels=["shard"]
        )
        stale_family = GaugeMetricFamily(
            "dmedian_shard_stale", "1 when a shard has been silent for over two heartbeats", labels=["shard"]
        )
        for snapshot in estimator.shards():
            if not shown(snapshot.shard):
                continue
            age.add_metric([str(snapshot.shard)], max(now_ms - snapshot.ts, 0) / 1000)
            stale_family.add_metric([str(snapshot.shard)], int(snapshot.shard in stale))
        yield age
        yield stale_family

    def _estimate_metrics(self, now_ms: int) -> Iterator[Metric]:
        record = newest_record(self._pipeline.aggregator.last_record, self._pipeline.shards.latest_record)
        if record is None:
            return
        gauges: list[tuple[str, str, Any]] = [
            ("dmedian_median", "The served global median", record.median.value),
            ("dmedian_median_rank_bound", "The served median's stated rank-error bound", record.rank_bound),
            ("dmedian_estimate_numbers", "Numbers the served estimate reflects", record.n),
            ("dmedian_estimate_shards", "Shards in the served estimate", record.shards),
            ("dmedian_estimate_pending", "Numbers ingested that the served estimate does not reflect", record.pending),
            ("dmedian_estimate_stale_shards", "Shards the served estimate counts as stale", record.stale_shards),
            ("dmedian_estimate_sources", "Edge shards (sources sending their own sketches) in it", record.sources),
            ("dmedian_estimate_stale_sources", "Edge shards the served estimate counts as stale", record.stale_sources),
            ("dmedian_estimate_age_seconds", "Seconds since the served estimate was made", (now_ms - record.ts) / 1000),
        ]
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        quantile = GaugeMetricFamily("dmedian_quantile", "The served quantiles", labels=["q"])
        bound = GaugeMetricFamily("dmedian_quantile_rank_bound", "Their stated rank-error bounds", labels=["q"])
        for estimate in record.quantiles:
            quantile.add_metric([repr(estimate.q)], estimate.band.value)
            bound.add_metric([repr(estimate.q)], record.bound_of(estimate))
        yield quantile
        yield bound


_DISTRIBUTION_LABELS = (("0", "min"), ("0.5", "p50"), ("0.9", "p90"), ("1", "max"))


def _shown(rows: list[ShardRow], limit: int, now_ms: int) -> Callable[[int], bool]:
    """Whether a shard gets per-shard series: all (-1), none (0), or the ``limit`` worst."""
    if limit < 0:
        return lambda _shard: True
    chosen = {row.shard for row in worst(rows, limit, worst_first(now_ms))}
    return chosen.__contains__


def _lag_metrics(lags: list[tuple[str, int, int]], limit: int) -> Iterator[Metric]:
    per_topic: dict[str, int] = {}
    for topic, _partition, behind in lags:
        per_topic[topic] = per_topic.get(topic, 0) + behind
    total = GaugeMetricFamily("dmedian_topic_consumer_lag", "Records not yet read, summed per topic", labels=["topic"])
    for topic, behind in sorted(per_topic.items()):
        total.add_metric([topic], behind)
    yield total
    lag = GaugeMetricFamily(
        "dmedian_consumer_lag",
        "Records not yet read, per assigned partition (the metrics_shard_series with the most)",
        labels=["topic", "partition"],
    )
    for topic, partition, behind in worst(lags, limit, lambda entry: entry[2]):
        lag.add_metric([topic, str(partition)], behind)
    yield lag


class WorkerMetrics:
    """The worker's own registry with its collector; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        """This app's registry (not prometheus_client's global one)."""
        self.registry.register(PipelineCollector(pipeline))

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
