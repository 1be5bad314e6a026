"""Prometheus metrics of one worker, read from the live services at scrape time.

One :class:`prometheus_client.CollectorRegistry` per app (never the global one:
several apps may live in one process, e.g. in tests) holding one custom
collector. Nothing is counted per number: the services already keep the counts
(shard states, dead-letter counters, snapshot counters, the aggregator's merge
time), and a scrape reads them.

Every name starts with ``dmedian_``; counters end in ``_total``, durations and ages
are in seconds. Per-shard series exist on the worker that owns (or sent) the shard;
the served estimate and the aggregator's view are on every worker (the estimate is
the newest ``medians`` record the worker has).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from pipeline.core.api_answers import newest_record

if TYPE_CHECKING:
    from faust.types import AppT

    from pipeline.app.factory import Pipeline

__all__ = ["CONTENT_TYPE", "PipelineCollector", "WorkerMetrics", "consumer_lag"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format that :func:`prometheus_client.generate_latest` writes."""


def consumer_lag(app: AppT) -> list[tuple[str, int, int]]:
    """(topic, partition, lag) for every partition assigned to this worker's consumer.

    Lag = the partition's end offset (high watermark, as of the last fetch) minus
    the next offset to read: one past the last offset Faust's monitor saw arrive,
    else the committed offset, else 0 (a new group reads from the start).
    """
    try:
        consumer = app.consumer
        assigned = consumer.assignment()
    except Exception:  # the consumer is not started yet, or is being replaced in a rebalance
        return []
    monitor = app.monitor
    lags = []
    for tp in sorted(assigned):
        try:
            end: int | None = consumer.highwater(tp)  # aiokafka: None until fetched
        except Exception:  # the partition was revoked since assignment() answered
            continue
        if end is None:
            continue  # nothing fetched from it yet: its end is unknown
        read = monitor.tp_read_offsets.get(tp)
        committed = monitor.tp_committed_offsets.get(tp)
        position = read + 1 if read is not None else (committed or 0)
        lags.append((tp.topic, tp.partition, max(int(end) - position, 0)))
    return lags


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
        yield from self._shard_metrics(now_ms)
        yield from self._aggregator_metrics(now_ms)
        yield from self._estimate_metrics(now_ms)
        lag = GaugeMetricFamily(
            "dmedian_consumer_lag", "Records not yet read, per assigned partition", labels=["topic", "partition"]
        )
        for topic, partition, behind in consumer_lag(self._pipeline.app):
            lag.add_metric([topic, str(partition)], behind)
        yield lag

    def _shard_metrics(self, now_ms: int) -> Iterator[Metric]:
        shards = self._pipeline.shards
        ingested = CounterMetricFamily(
            "dmedian_numbers_ingested", "Numbers in each owned shard's state (all time)", labels=["shard"]
        )
        for shard in shards.owned:
            state = shards.local_state(shard)
            if state is not None:
                ingested.add_metric([str(shard)], state.n)
        yield ingested
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
        for shard, count in sorted(shards.snapshots_sent_by_shard.items()):
            sent.add_metric([str(shard)], count)
            sent_bytes.add_metric([str(shard)], shards.snapshot_bytes_by_shard.get(shard, 0))
        yield sent
        yield sent_bytes
        yield CounterMetricFamily(
            "dmedian_heartbeats_sent", "Progress messages this worker sent", value=shards.heartbeats_sent
        )
        if not self._pipeline.aggregator.hosted:
            # The aggregator's view, below, is the complete one; here only what this worker sent.
            age = GaugeMetricFamily(
                "dmedian_snapshot_age_seconds", "Seconds since each shard's last snapshot", labels=["shard"]
            )
            for shard in shards.owned:
                sent_ms = shards.last_snapshot_ms_by_shard.get(shard)
                if sent_ms is not None:
                    age.add_metric([str(shard)], max(now_ms - sent_ms, 0) / 1000)
            yield age

    def _aggregator_metrics(self, now_ms: int) -> Iterator[Metric]:
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


class WorkerMetrics:
    """The worker's own registry with its collector; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        """This app's registry (not prometheus_client's global one)."""
        self.registry.register(PipelineCollector(pipeline))

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
