"""What one worker knows of each shard, gathered once for ``/shards``, ``/metrics`` and the dashboard.

The edge shards (sources that send their own sketches) are known on the
aggregator's worker only: :func:`gather_sources`.

The aggregator's worker knows every shard with a snapshot (the aggregator holds
the latest of each, and its liveness notes say which are silent); every worker
knows the shards it owns (their state, what it sent, its consumer's lag). The
rows carry cheap facts only: a shard's local median from its own state costs a
sketch query, so it is filled in for the few rows shown (:func:`with_local_medians`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipeline.core.shard_listing import ShardRow
from pipeline.core.sketch import QuantileBand, quantile_band
from pipeline.core.source_listing import SourceRow, source_rows

if TYPE_CHECKING:
    from faust.types import AppT

    from pipeline.app.factory import Pipeline

__all__ = ["consumer_lag", "gather_rows", "gather_sources", "with_local_medians"]

logger = logging.getLogger(__name__)


def consumer_lag(app: AppT) -> list[tuple[str, int, int]]:
    """(topic, partition, lag) for every partition assigned to this worker's consumer (in no set order).

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
    for tp in assigned:
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


def gather_rows(
    pipeline: Pipeline, now_ms: int, lags: list[tuple[str, int, int]] | None = None
) -> tuple[list[ShardRow], bool]:
    """One row per shard this worker knows, and whether that is every shard (the aggregator's view).

    ``lags``: :func:`consumer_lag`'s answer when the caller has it already.
    """
    stale_after_ms = 2 * pipeline.settings.heartbeat_ms
    shards, aggregator = pipeline.shards, pipeline.aggregator
    numbers_topic = pipeline.settings.topic_numbers
    lags = consumer_lag(pipeline.app) if lags is None else lags
    lag_of = {partition: lag for topic, partition, lag in lags if topic == numbers_topic}
    sent, sent_bytes = shards.snapshots_sent_by_shard, shards.snapshot_bytes_by_shard
    rows: dict[int, ShardRow] = {}
    estimator = aggregator.estimator
    if estimator is not None:
        stale = set(aggregator.liveness.stale(now_ms, stale_after_ms))
        for snapshot in estimator.shards():
            shard = snapshot.shard
            rows[shard] = ShardRow(
                shard, False, snapshot.n, snapshot.median, snapshot.ts, shard in stale, sent.get(shard),
                sent_bytes.get(shard), lag_of.get(shard), snapshot.last_offset, snapshot.rejected,
            )  # fmt: skip
    for shard in shards.owned:
        state = shards.local_state(shard)
        known = rows.get(shard)
        signal_ms = shards.last_signal_ms(shard)
        own_stale = None if not signal_ms else now_ms - signal_ms > stale_after_ms
        rows[shard] = ShardRow(
            shard,
            True,
            state.n if state is not None else (known.n if known else None),
            known.median if known else None,
            known.last_snapshot_ms if known else shards.last_snapshot_ms_by_shard.get(shard),
            known.stale if known else own_stale,
            sent.get(shard, 0),
            sent_bytes.get(shard, 0),
            lag_of.get(shard),
            state.last_offset if state is not None else (known.last_offset if known else None),
            sum(state.rejected.values()) if state is not None else (known.rejected if known else None),
        )
    # In no set order: the callers pick a few (a heap), which needs no sort of all of them.
    return list(rows.values()), estimator is not None


def gather_sources(pipeline: Pipeline, now_ms: int) -> tuple[list[SourceRow], int] | None:
    """One row per edge shard and the numbers they have pending, on the aggregator's worker (else None).

    Stale after the shards' staleness age (two heartbeats), counted from when the
    aggregator last heard from each (its ledger's clock, not the source's).
    """
    aggregator = pipeline.aggregator
    estimator = aggregator.estimator
    if estimator is None:
        return None
    book = aggregator.sources
    rows = source_rows(estimator.sources(), book, now_ms, 2 * pipeline.settings.heartbeat_ms)
    return rows, book.pending()


def with_local_medians(pipeline: Pipeline, rows: list[ShardRow]) -> list[ShardRow]:
    """The rows, each owned shard's median taken from its current state (the rest keep their snapshot's)."""
    filled = []
    for row in rows:
        state = pipeline.shards.local_state(row.shard) if row.owned_here else None
        filled.append(replace(row, median=_local_median(state.sketch)) if state is not None and state.n else row)
    return filled


def _local_median(sketch: Any) -> QuantileBand:
    error = float(sketch.normalized_rank_error(False))
    return quantile_band(sketch, 0.5, error)
