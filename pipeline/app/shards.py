"""The shard agent: each partition of the input topic keeps its own KLL sketch.

Per batch of events: group by partition, apply each partition's records through
the ingestion seam, write that shard's state to the table once, dead-letter
what was rejected, and send a snapshot when the emission rule says so. A timer
sends the snapshots the rule held back, so the last change always goes out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import AppT, EventT, StreamT, TableT, TopicT
from faust.types.tuples import TP

from config import Settings
from pipeline.app.dead_letters import DeadLetterSink
from pipeline.app.event_context import bound_to_event
from pipeline.app.global_view import MediansFollower
from pipeline.core.budget import GlobalView
from pipeline.core.codec import CodecOptions
from pipeline.core.emission import EmissionState, ShardEmissionRule
from pipeline.core.ingest import RecordBatch, ingest_batch, rejection_counts
from pipeline.core.sketch import ShardState
from pipeline.core.sketches_contract import progress_key, shard_key
from pipeline.core.wire import DeadLetter, MedianRecord, ShardProgress, SketchSnapshot
from pipeline.transport import resume_from_state

__all__ = ["ShardService", "shard_key"]

logger = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Slot:
    """This worker's in-memory view of one shard it owns."""

    emission: EmissionState
    state: ShardState | None = None


class ShardService:
    """Owns the shard agent, the snapshot flush timer and the per-shard state cache."""

    def __init__(
        self,
        app: AppT,
        settings: Settings,
        table: TableT[bytes, bytes],
        sketches: TopicT,
        dead_letters: DeadLetterSink,
        rule: ShardEmissionRule,
        follower: MediansFollower,
    ) -> None:
        self._app = app
        self._settings = settings
        self._table = table
        self._sketches = sketches
        self._dead_letters = dead_letters
        self._rule = rule
        self._follower = follower
        self._records_seen = 0
        self._send_lock = asyncio.Lock()
        self._codec = CodecOptions(settings.accept_infinity, settings.max_value_bytes)
        self._slots: dict[int, _Slot] = {}
        self._numbers_topic = settings.topic_numbers
        self.snapshots_sent = 0
        """Snapshots this worker sent."""
        self.snapshot_bytes_sent = 0
        """Bytes of snapshots this worker sent."""
        self.heartbeats_sent = 0
        """Progress messages (heartbeats) this worker sent."""
        self.snapshots_sent_by_shard: dict[int, int] = {}
        """Snapshots this worker sent, per shard (kept after a shard moves away: counters never go back)."""
        self.snapshot_bytes_by_shard: dict[int, int] = {}
        """Bytes of snapshots this worker sent, per shard."""
        self.last_snapshot_ms_by_shard: dict[int, int] = {}
        """When this worker last sent a snapshot of each shard, epoch ms."""

    def register(self, numbers: TopicT) -> None:
        """Attach the agent, the flush timer and the rebalance hooks to the app."""
        run = self._run_batches if self._settings.delivery == "batch" else self._run_events
        self._app.agent(numbers, name="shards")(run)
        interval_s = max(self._settings.emit_interval_ms / 4000, 0.01)
        self._app.timer(interval_s, name="shards.flush")(self._flush)
        self._app.task(self._follow_medians)
        # mode's Signal stubs want a receiver taking *args; ours names its argument.
        self._app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        self._app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        resume_from_state(self._app, self._resume_offset)

    def _resume_offset(self, tp: TP) -> int | None:
        # The offset after the last record the stored state applied: the source of truth.
        stored = self._table.get(shard_key(tp.partition)) if tp.topic == self._numbers_topic else None
        return ShardState.from_bytes(stored).last_offset + 1 if stored else None

    @property
    def owned(self) -> list[int]:
        """Shards this worker owns now."""
        return sorted(self._slots)

    def local_state(self, shard: int) -> ShardState | None:
        """The cached state of an owned shard (None if not loaded yet)."""
        slot = self._slots.get(shard)
        return slot.state if slot else None

    @property
    def latest_record(self) -> MedianRecord | None:
        """The newest ``medians`` record this worker has read (None before the first)."""
        return self._follower.latest

    def last_signal_ms(self, shard: int) -> int:
        """When an owned shard last sent a snapshot or heartbeat, epoch ms (0: never, or not owned)."""
        slot = self._slots.get(shard)
        return slot.emission.last_signal_ms if slot else 0

    async def _run_batches(self, stream: StreamT[Any]) -> AsyncIterator[None]:
        # Batch delivery: each event is one fetched batch of one partition.
        async for event in stream.events():
            raw = event.value
            await self._apply(event.message.partition, RecordBatch(raw.offsets, raw.values, raw.keys), event)
            yield None

    async def _run_events(self, stream: StreamT[Any]) -> AsyncIterator[None]:
        # Per-event delivery, grouped into batches so that each shard's state is
        # written once per batch, not once per number.
        within = self._settings.batch_within_ms / 1000
        # take_events exists on faust.Stream but is missing from the StreamT interface.
        batches = stream.take_events(self._settings.batch_max_events, within=within)  # type: ignore[attr-defined]
        async for events in batches:
            for partition, group in _by_partition(events).items():
                batch = RecordBatch([e.message.offset for e in group], [e.message.value for e in group],
                                    [e.message.key for e in group])  # fmt: skip
                await self._apply(partition, batch, group[-1])
            yield None

    async def _follow_medians(self) -> None:
        # Started with the worker, not with the app: building an app reads nothing.
        self._follower.start()

    def _slot(self, shard: int) -> _Slot:
        slot = self._slots.get(shard)
        if slot is None:
            slot = self._slots[shard] = _Slot(self._rule.new_state())
            slot.emission.see(self._view)
        return slot

    @property
    def _view(self) -> GlobalView | None:
        latest = self._follower.latest
        return GlobalView.from_record(latest) if latest is not None else None

    async def _apply(self, partition: int, batch: RecordBatch, last_event: EventT[Any]) -> None:
        with bound_to_event(last_event):
            state = self._load(partition)
            result = ingest_batch(state, batch, self._codec)
            if result.advanced:
                # One write per shard per batch: the changelog carries the whole sketch.
                self._table[shard_key(partition)] = state.to_bytes()
        for record, rejection in result.rejections:
            letter = DeadLetter(
                rejection.reason.value,
                rejection.detail,
                self._numbers_topic,
                partition,
                record.offset,
                record.value,
                tuple((bad.index, bad.reason.value) for bad in rejection.bad_elements),
            )
            await self._dead_letters.send(letter, record.key, rejection_counts(rejection))
        now_ms = _now_ms()
        slot = self._slot(partition)
        slot.emission.observe(state.n, state.last_offset, result.accepted_values, now_ms)
        await self._maybe_emit(partition, slot, now_ms)

    def _load(self, partition: int) -> ShardState:
        slot = self._slot(partition)
        if slot.state is None:
            stored = self._table.get(shard_key(partition))
            slot.state = (
                ShardState.from_bytes(stored) if stored else ShardState.empty(partition, self._settings.sketch_k)
            )
            logger.info("shard %d: loaded state n=%d last_offset=%d", partition, slot.state.n, slot.state.last_offset)
            slot.emission.observe(slot.state.n, slot.state.last_offset)
        return slot.state

    async def _maybe_emit(self, shard: int, slot: _Slot, now_ms: int) -> None:
        state, emission = slot.state, slot.emission
        if state is None:
            return
        # Each message is made and marked sent before the send's await: the agent and
        # the flush timer run concurrently, and a state that changes during the await
        # must stay unsent, not be marked sent. The lock keeps a shard's messages in order.
        if self._rule.should_emit(emission, now_ms):
            key, payload = (
                shard_key(shard),
                SketchSnapshot.from_state(state, now_ms, self._rule.urgent(emission)).to_bytes(),
            )
            emission.mark_emitted(now_ms, state.sketch)
            self.snapshots_sent += 1
            self.snapshot_bytes_sent += len(payload)
            self.snapshots_sent_by_shard[shard] = self.snapshots_sent_by_shard.get(shard, 0) + 1
            self.snapshot_bytes_by_shard[shard] = self.snapshot_bytes_by_shard.get(shard, 0) + len(payload)
            self.last_snapshot_ms_by_shard[shard] = now_ms
        elif self._rule.should_heartbeat(emission, now_ms):
            # Header only: "alive, ingested this far"; silence then means a dead shard.
            progress = ShardProgress(shard, max(emission.emitted_n, 0), state.n, state.last_offset, now_ms)
            key, payload = progress_key(shard), progress.to_bytes()
            emission.mark_heartbeat(now_ms)
            self.heartbeats_sent += 1
        else:
            return
        async with self._send_lock:
            await self._sketches.send(key=key, value=payload)

    async def _flush(self) -> None:
        if self._app.rebalancing or getattr(self._app, "in_recovery", False):
            return
        now_ms = _now_ms()
        if self._follower.records_read != self._records_seen:
            # A newer global record: each shard checks its budget against it.
            self._records_seen = self._follower.records_read
            view = self._view
            for slot in self._slots.values():
                slot.emission.see(view)
        for shard, slot in list(self._slots.items()):
            if slot.state is None:
                # Newly assigned: announce its restored state once, so the aggregator
                # has it even if no new number ever arrives on this shard.
                stored = self._table.get(shard_key(shard))
                if not stored:
                    continue
                slot.state = ShardState.from_bytes(stored)
                slot.emission.observe(slot.state.n, slot.state.last_offset, now_ms=now_ms)
            await self._maybe_emit(shard, slot, now_ms)

    async def _on_assigned(self, _sender: AppT, assigned: set[TP], **_kwargs: Any) -> None:
        for tp in assigned:
            if tp.topic == self._numbers_topic:
                self._slot(tp.partition)

    async def _on_revoked(self, _sender: AppT, revoked: set[TP], **_kwargs: Any) -> None:
        # Another worker may own these next; our cached state would go stale.
        for tp in revoked:
            if tp.topic == self._numbers_topic:
                self._slots.pop(tp.partition, None)


def _by_partition(events: Sequence[EventT[Any]]) -> dict[int, list[EventT[Any]]]:
    groups: dict[int, list[EventT[Any]]] = {}
    for event in events:
        groups.setdefault(event.message.partition, []).append(event)
    return groups
