"""The aggregator agent: merges the latest snapshot of every shard and publishes.

``sketches`` has one partition, so exactly one worker hosts the aggregator.
With batch delivery (the default) the agent gets one event per fetched batch of
``sketches`` records, not one per record: Faust's per-record path, not the
merge, was the aggregator's ceiling (DESIGN.md section 7). Every record goes
through the topic's contract (:func:`~pipeline.core.sketches_contract.accept`),
the same check as the rebuild's.
``sketches`` is compacted and keyed by shard: read to its end it holds every
shard's latest snapshot, so it is the aggregator's changelog. A worker that
takes the aggregator over rebuilds from it (in a thread, before its first
record) instead of from a second copy in a table. It publishes the global
record to ``medians`` at most every ``publish_interval_ms``, whenever the
estimate changed, and at once after a shard's budget snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from faust.types import AppT, StreamT, TopicT
from faust.types.tuples import TP

from config import Settings
from pipeline.app.dead_letters import DeadLetterSink
from pipeline.core.aggregation import AggregateState
from pipeline.core.dead_letter import DeadLetter
from pipeline.core.emission import EmissionState, IntervalRule
from pipeline.core.liveness import ShardLiveness
from pipeline.core.merge import GlobalEstimator
from pipeline.core.sketches_contract import SnapshotLimits
from pipeline.core.source_contract import SourceBook
from pipeline.core.wire import MedianRecord, SnapshotError
from pipeline.kafka.sketches_log import SketchesLog, read_sketches_log, source_policy
from pipeline.transport import RawBatch

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
        medians: TopicT,
        dead_letters: DeadLetterSink,
        shard_limit: Callable[[], int] | None = None,
    ) -> None:
        self._app = app
        self.shard_limit: Callable[[], int] = shard_limit or (lambda: settings.numbers_partitions)
        """How many shards exist now (the input topic's partitions): messages of a shard id at or above
        it are dead-lettered as ``snapshot_unknown_shard``. The one place to update when the topic grows."""
        self._settings = settings
        self._medians = medians
        self._dead_letters = dead_letters
        self._throttle = IntervalRule(settings.publish_interval_ms)
        self._output = EmissionState()
        # The merge, liveness and ledger; ``_restored`` once rebuilt from ``sketches`` on this assignment.
        self._state = AggregateState.empty(settings.sketch_k, settings.quantiles, source_policy(settings))
        self._sketches: TopicT | None = None
        self._restored = False
        # The rebuild from ``sketches`` started when this worker took the aggregator over.
        self._rebuild: asyncio.Future[SketchesLog] | None = None
        self._assigned_at = 0.0
        self._hosted = False
        self._changes = 0
        self._urgent = False
        self._send_lock = asyncio.Lock()
        # Records below this offset of ``sketches`` were read by the rebuild: the agent does not
        # apply them again (a replayed snapshot could undo a later tombstone, and an edge shard's
        # older sequence number would read as going back), only dead-letters what the rebuild refused.
        self._rebuilt_to = 0
        self._refused: dict[int, SnapshotError] = {}
        # The record states theta only when the shards spend it (the budget rule).
        self._theta = settings.error_budget if settings.emission_rule == "budget" else None
        self.last_record: MedianRecord | None = None
        """The last record this worker published."""
        self.merges = 0
        """Merged records made (each merges the changed snapshots, then evaluates the quantiles)."""
        self.merge_seconds = 0.0
        """Time spent making them, in seconds (with :attr:`merges`: a Prometheus summary)."""
        self.last_rebuild: SketchesLog | None = None
        """What the last takeover read from ``sketches``."""

    def register(self, sketches: TopicT) -> None:
        """Attach the agent, the publish timer and the rebalance hooks to the app."""
        self._sketches = sketches
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

    @property
    def estimator(self) -> GlobalEstimator | None:
        """The merge state while this worker hosts the aggregator and has rebuilt it (read it, do not change it)."""
        return self._state.estimator if self.restored else None

    @property
    def liveness(self) -> ShardLiveness:
        """The shards' progress and silence as this aggregator saw it (read it, do not change it)."""
        return self._state.liveness

    @property
    def sources(self) -> SourceBook:
        """The edge shards' ledger as this aggregator holds it (read it, do not change it)."""
        return self._state.sources

    @property
    def restored(self) -> bool:
        """Whether this worker hosts the aggregator and has rebuilt its state."""
        return self._hosted and self._restored

    async def _run(self, stream: StreamT[Any]) -> AsyncIterator[None]:
        async for event in stream.events():
            message = event.message
            batch = message.value
            if isinstance(batch, RawBatch):  # batch delivery: every record of one fetch
                await self._take(message.topic, message.partition, batch.offsets, batch.keys, batch.values)
            else:
                await self._take(message.topic, message.partition, [message.offset], [message.key], [batch])
            # Once per event: a batch's urgent snapshots share one record, not one each.
            await self._publish_if_due()
            yield None

    async def _take(
        self,
        topic: str,
        partition: int,
        offsets: Sequence[int],
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
    ) -> None:
        state = await self._ready()
        # Well-formed is not enough: a forged key, shard id, count or sketch must not reach the estimate.
        limits = SnapshotLimits(self.shard_limit(), self._settings.max_value_bytes, self._settings.accept_infinity)
        for offset, key, value in zip(offsets, keys, values, strict=True):
            if offset < self._rebuilt_to:
                refused = self._refused.pop(offset, None)
                if refused is not None:
                    letter = DeadLetter(f"snapshot_{refused.reason}", refused.detail, topic, partition, offset, value)
                    await self._reject(letter, key)
                continue
            try:
                taken = state.take(key, value, limits, _now_ms())
            except SnapshotError as exc:
                letter = DeadLetter(f"snapshot_{exc.reason}", exc.detail, topic, partition, offset, value)
                await self._reject(letter, key)
                continue
            if taken.changed:
                self._changed()
                self._urgent = self._urgent or taken.urgent

    async def _reject(self, letter: DeadLetter, key: bytes | None) -> None:
        logger.warning("rejected snapshot at offset %d: %s: %s", letter.offset, letter.reason, letter.detail)
        await self._dead_letters.send(letter, key)
        # Compaction keeps the last record written under a key, refused or not: the edge shard's
        # held snapshot goes back under its key, so that a rebuild reads it rather than the refusal.
        held = self._state.held_value(key)
        if held is not None and self._sketches is not None:
            await self._sketches.send(key=key, value=held)

    def _changed(self) -> None:
        self._changes += 1
        self._output.version = self._changes

    async def _ready(self) -> AggregateState:
        """The state, once rebuilt from ``sketches`` (waits for the rebuild)."""
        if not self._restored:
            if self._rebuild is None:
                self._start_rebuild()
            assert self._rebuild is not None
            rebuild = self._rebuild
            try:
                log = await rebuild
            except Exception:
                # A broker that is down or restarting: try again rather than crash the agent.
                logger.exception("aggregator: rebuilding from %s failed; retrying", self._settings.topic_sketches)
                await asyncio.sleep(1.0)  # not a tight loop while the broker is away
                if rebuild is self._rebuild:
                    self._start_rebuild()
                return await self._ready()
            if not self._restored and rebuild is self._rebuild:
                self._restore(log)
        return self._state

    def _start_rebuild(self) -> None:
        # A blocking read with a C client, off the event loop: the agent and the timer
        # wait for it, the worker's other agents (and its heartbeats) do not.
        self._assigned_at = time.monotonic()
        self._rebuild = asyncio.ensure_future(
            asyncio.to_thread(read_sketches_log, self._settings, shard_limit=self.shard_limit())
        )

    def _restore(self, log: SketchesLog) -> None:
        estimator = GlobalEstimator(self._settings.sketch_k, self._settings.quantiles)
        state = AggregateState(estimator, log.book)  # the ledger as the rebuild's admissions left it
        for snapshot in log.snapshots.values():
            estimator.offer(snapshot)
            state.liveness.note_snapshot(snapshot)
        for progress in log.progress.values():
            state.liveness.note_progress(progress)
        for source in log.sources.values():
            estimator.offer_source(source)
        self._state, self._restored = state, True
        self._rebuilt_to = log.end_offset
        self._refused = dict(log.refused)
        self.last_rebuild = log
        self._changed()
        logger.info(
            "aggregator: rebuilt from %d records of %s up to offset %d in %.3f s: %d shards, %d sources, n=%d "
            "(%.3f s since assignment)",
            log.records_read,
            self._settings.topic_sketches,
            log.end_offset,
            log.seconds,
            estimator.shard_count,
            estimator.source_count,
            estimator.n,
            time.monotonic() - self._assigned_at,
        )

    async def _publish_if_due(self) -> None:
        if not self._hosted or self._app.rebalancing or getattr(self._app, "in_recovery", False):
            return
        if not self._restored and not (self._rebuild is not None and self._rebuild.done()):
            return  # still rebuilding: the first record must be complete
        state = await self._ready()
        estimator = state.estimator
        now_ms = _now_ms()
        due = self._output.changed and (self._urgent or self._throttle.should_emit(self._output, now_ms))
        # An empty estimate is published only once it held something: a retirement empties it.
        if not due or (estimator.shard_count + estimator.source_count == 0 and self.last_record is None):
            return
        self._urgent = False
        started = time.perf_counter()
        record = state.record(now_ms, self._theta, 2 * self._settings.heartbeat_ms)
        self.merge_seconds += time.perf_counter() - started
        self.merges += 1
        # Marked before the send's await, so the timer and the agent never both send
        # this state; the lock keeps records on the topic in the order they were made.
        self._output.mark_emitted(now_ms)
        self.last_record = record
        async with self._send_lock:
            await self._medians.send(key=MEDIAN_KEY, value=record.to_json())

    async def _on_assigned(self, _sender: AppT, assigned: set[TP], **_kwargs: Any) -> None:
        if any(tp.topic == self._settings.topic_sketches for tp in assigned):
            self._hosted = True
            self._restored = False
            self._start_rebuild()

    async def _on_revoked(self, _sender: AppT, revoked: set[TP], **_kwargs: Any) -> None:
        if any(tp.topic == self._settings.topic_sketches for tp in revoked):
            self._hosted = False
            self._restored = False
            self._rebuild = None
