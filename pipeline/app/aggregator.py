"""The aggregator agent: merges the latest snapshot of every shard and publishes.

``sketches`` has one partition, so exactly one worker hosts the aggregator.
It keeps each shard's latest snapshot in a table (restored from its changelog
when another worker takes over) and publishes the global record to ``medians``
at most every ``publish_interval_ms``, whenever the estimate changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from faust.types import AppT, EventT, StreamT, TableT, TopicT
from faust.types.tuples import TP

from config import Settings
from pipeline.app.dead_letters import DeadLetterSink
from pipeline.app.shards import shard_key
from pipeline.core.budget import ShardLiveness
from pipeline.core.emission import EmissionState, IntervalRule
from pipeline.core.merge import GlobalEstimator
from pipeline.core.wire import (
    DeadLetter,
    MedianRecord,
    ShardProgress,
    SketchSnapshot,
    SnapshotError,
    parse_sketches_value,
    progress_key,
)

__all__ = ["MEDIAN_KEY", "AggregatorService"]

logger = logging.getLogger(__name__)

MEDIAN_KEY = b"global"


def _now_ms() -> int:
    return int(time.time() * 1000)


class AggregatorService:
    """Owns the aggregator agent, its publish timer and the in-memory merge state."""

    def __init__(
        self,
        app: AppT,
        settings: Settings,
        table: TableT[bytes, bytes],
        medians: TopicT,
        dead_letters: DeadLetterSink,
    ) -> None:
        self._app = app
        self._settings = settings
        self._table = table
        self._medians = medians
        self._dead_letters = dead_letters
        self._throttle = IntervalRule(settings.publish_interval_ms)
        self._output = EmissionState()
        self._estimator: GlobalEstimator | None = None
        self._hosted = False
        self._changes = 0
        self._urgent = False
        self._send_lock = asyncio.Lock()
        self._liveness = ShardLiveness()
        # The record states theta only when the shards spend it (the budget rule).
        self._theta = settings.error_budget if settings.emission_rule == "budget" else None
        self.last_record: MedianRecord | None = None
        """The last record this worker published."""

    def register(self, sketches: TopicT) -> None:
        """Attach the agent, the publish timer and the rebalance hooks to the app."""
        self._app.agent(sketches, name="aggregator")(self._run)
        interval_s = max(self._settings.publish_interval_ms / 4000, 0.01)
        self._app.timer(interval_s, name="aggregator.publish")(self._publish_if_due)
        # mode's Signal stubs want a receiver taking *args; ours names its argument.
        self._app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        self._app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    @property
    def hosted(self) -> bool:
        """Whether this worker hosts the aggregator now."""
        return self._hosted

    async def _run(self, stream: StreamT[Any]) -> AsyncIterator[None]:
        async for event in stream.events():
            await self._take(event)
            await self._publish_if_due()
            yield None

    async def _take(self, event: EventT[Any]) -> None:
        key, value = event.message.key, event.message.value
        estimator = self._ensure_estimator()
        if value is None:
            # A tombstone retires a shard: its numbers leave the estimate.
            shard = _shard_of(key)
            if key is not None and shard is not None:
                estimator.forget(shard)
                self._liveness.forget(shard)
                self._table.pop(key, None)
                self._changed()
            return
        try:
            message = parse_sketches_value(value)
            expected = progress_key(message.shard) if isinstance(message, ShardProgress) else shard_key(message.shard)
            if key != expected:
                raise SnapshotError("key_mismatch", f"key {key!r} does not name shard {message.shard}")
        except SnapshotError as exc:
            await self._reject(event, exc)
            return
        if isinstance(message, ShardProgress):
            self._liveness.note_progress(message)
            return
        self._liveness.note_snapshot(message)
        if estimator.offer(message):
            self._table[key] = value
            self._changed()
            # A budget snapshot resets what the shard vouches for: publish it at once.
            self._urgent = self._urgent or message.urgent

    async def _reject(self, event: EventT[Any], exc: SnapshotError) -> None:
        message = event.message
        letter = DeadLetter(
            f"snapshot_{exc.reason}", exc.detail, message.topic, message.partition, message.offset, message.value
        )
        logger.warning("rejected snapshot at offset %d: %s", message.offset, exc)
        await self._dead_letters.send(letter, message.key)

    def _changed(self) -> None:
        self._changes += 1
        self._output.version = self._changes

    def _ensure_estimator(self) -> GlobalEstimator:
        if self._estimator is None:
            estimator = GlobalEstimator(self._settings.sketch_k, self._settings.quantiles)
            # The table was restored from its changelog before agents and timers resume.
            self._liveness = ShardLiveness()
            for key, value in self._table.items():
                try:
                    snapshot = SketchSnapshot.from_bytes(value)
                    estimator.offer(snapshot)
                    self._liveness.note_snapshot(snapshot)
                except SnapshotError as exc:
                    logger.error("ignoring unreadable stored snapshot %r: %s", key, exc)
            logger.info("aggregator: restored %d shards, n=%d", estimator.shard_count, estimator.n)
            self._estimator = estimator
            self._changed()
        return self._estimator

    async def _publish_if_due(self) -> None:
        if not self._hosted or self._app.rebalancing or getattr(self._app, "in_recovery", False):
            return
        estimator = self._ensure_estimator()
        now_ms = _now_ms()
        due = self._output.changed and (self._urgent or self._throttle.should_emit(self._output, now_ms))
        if estimator.shard_count == 0 or not due:
            return
        self._urgent = False
        stale = self._liveness.stale(now_ms, 2 * self._settings.heartbeat_ms)
        record = estimator.record(now_ms, self._theta, self._liveness.pending(), len(stale))
        # Marked before the send's await, so the timer and the agent never both send
        # this state; the lock keeps records on the topic in the order they were made.
        self._output.mark_emitted(now_ms)
        self.last_record = record
        async with self._send_lock:
            await self._medians.send(key=MEDIAN_KEY, value=record.to_json())

    async def _on_assigned(self, _sender: AppT, assigned: set[TP], **_kwargs: Any) -> None:
        if any(tp.topic == self._settings.topic_sketches for tp in assigned):
            self._hosted = True
            self._estimator = None  # rebuilt from the restored table on first use

    async def _on_revoked(self, _sender: AppT, revoked: set[TP], **_kwargs: Any) -> None:
        if any(tp.topic == self._settings.topic_sketches for tp in revoked):
            self._hosted = False
            self._estimator = None


def _shard_of(key: bytes | None) -> int | None:
    try:
        return int(key) if key is not None else None
    except ValueError:
        return None
