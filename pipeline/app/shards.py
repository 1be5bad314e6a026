"""The shard agent: each partition of the input topic keeps its own KLL sketch.

Per batch of events: group by partition, apply each partition's records through
the ingestion seam, write that shard's state to the table once, dead-letter
what was rejected, and send a snapshot when the emission rule says so. A timer
sends the snapshots the rule held back, so the last change always goes out.

The timer's cost follows change, not the shards owned (:mod:`pipeline.core.deadlines`):
each shard keeps the deadline its rule gives (idle flush, heartbeat) and a tick
looks only at the due ones; a newer ``medians`` record is re-checked only by the
shards with unsent numbers (the others take it when next looked at), a bounded
number per tick (why that keeps the budget's guarantee: the module docs of
:mod:`pipeline.core.deadlines`); a newly assigned shard's restored state is
announced a bounded number of shards per tick. A tick hands the event loop back
every :data:`YIELD_EVERY` shards, so the agent and the consumer keep running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from faust.types import AppT, EventT, StreamT, TableT, TopicT
from faust.types.tuples import TP

from config import Settings
from pipeline.app.dead_letters import DeadLetterSink
from pipeline.app.event_context import bound_to_event
from pipeline.app.global_view import MediansFollower
from pipeline.core.budget import GlobalView
from pipeline.core.codec import CodecOptions
from pipeline.core.dead_letter import DeadLetter
from pipeline.core.deadlines import FlushSchedule
from pipeline.core.emission import EmissionState, ShardEmissionRule
from pipeline.core.ingest import RecordBatch, ingest_batch, rejection_counts
from pipeline.core.sketch import ShardState
from pipeline.core.sketches_contract import progress_key, shard_key
from pipeline.core.wire import MedianRecord, ShardProgress, SketchSnapshot
from pipeline.transport import resume_from_state

__all__ = ["ShardService", "shard_key"]

logger = logging.getLogger(__name__)


# Announcements, due shards and re-checks against a newer record one tick takes on
# (each): a takeover of thousands of shards, or a record while thousands hold unsent
# numbers, spreads over ticks instead of stalling the event loop in one.
PER_TICK = 200

# Shards a tick looks at between two hand-backs to the event loop (a send is one too):
# a look costs tens of µs, so the agent and the consumer wait a few ms at most for the timer.
YIELD_EVERY = 32


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Slot:
    """This worker's in-memory view of one shard it owns."""

    emission: EmissionState
    state: ShardState | None = None
    view_seen: int = -1
    """The ``medians`` records read when :attr:`emission` last took the latest one."""


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
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._app = app
        self._settings = settings
        self._table = table
        self._sketches = sketches
        self._dead_letters = dead_letters
        self._rule = rule
        self._follower = follower
        self._clock = clock
        self._records_seen = 0
        self._view: GlobalView | None = None
        self._schedule = FlushSchedule(PER_TICK, recheck_per_tick=PER_TICK)
        self._assigned = 0
        """Shards newly assigned since the last takeover line was logged."""
        self._announced = 0
        """Of those, the ones announced by the timer (the rest were read by a batch first)."""
        self._assigned_at = time.monotonic()
        self._ticks = _TickLog()
        self._send_lock = asyncio.Lock()
        self._codec = CodecOptions(settings.accept_infinity, settings.max_value_bytes)
        self._slots: dict[int, _Slot] = {}
        self._revoked_pending: set[int] = set()
        """Shards the last revocation named, kept until the next assignment says whether they stay."""
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
        # Once per assigned partition per rebalance, after recovery. A newly assigned
        # shard keeps the state read here, so its announcement reads nothing again.
        stored = self._table.get(shard_key(tp.partition)) if tp.topic == self._numbers_topic else None
        if not stored:
            return None
        state = ShardState.from_bytes(stored)
        slot = self._slots.get(tp.partition)
        if slot is not None and slot.state is not None and slot.state.last_offset != state.last_offset:
            # A kept slot the store disagrees with (another worker wrote the shard meanwhile):
            # start it afresh from the stored state and announce it, as a new shard.
            logger.warning(
                "shard %d: kept state at offset %d, stored state at %d: reloaded",
                tp.partition, slot.state.last_offset, state.last_offset,
            )  # fmt: skip
            slot = self._slots[tp.partition] = _Slot(self._rule.new_state())
            self._schedule.revoked(tp.partition)
            self._schedule.assigned(tp.partition)
        if slot is not None and slot.state is None:
            slot.state = state
            slot.emission.observe(state.n, state.last_offset, now_ms=self._clock())
        return state.last_offset + 1

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
            # It takes the latest record when first looked at (_take_view).
            slot = self._slots[shard] = _Slot(self._rule.new_state())
        return slot

    def _latest_view(self) -> int:
        # O(1): a newer record is only noted here; the shards take it lazily.
        read = self._follower.records_read
        if read != self._records_seen:
            self._records_seen = read
            latest = self._follower.latest
            self._view = GlobalView.from_record(latest) if latest is not None else None
            self._schedule.new_record()
        return read

    def _take_view(self, slot: _Slot) -> None:
        # Before any check: the newest record this worker read, if the shard has not taken it yet.
        seen = self._latest_view()
        if slot.view_seen != seen:
            slot.emission.see(self._view)
            slot.view_seen = seen

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
        now_ms = self._clock()
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
            logger.debug("shard %d: loaded state n=%d last_offset=%d", partition, slot.state.n, slot.state.last_offset)
            slot.emission.observe(slot.state.n, slot.state.last_offset)
            self._schedule.announced(partition)
        return slot.state

    async def _maybe_emit(self, shard: int, slot: _Slot, now_ms: int) -> None:
        message = self._evaluate(shard, slot, now_ms)
        if message is not None:
            await self._send(message)

    async def _send(self, message: tuple[bytes, bytes]) -> None:
        async with self._send_lock:
            await self._sketches.send(key=message[0], value=message[1])

    def _evaluate(self, shard: int, slot: _Slot, now_ms: int) -> tuple[bytes, bytes] | None:
        # The message the rule asks for now, if any (no await: the tick times its own work with it).
        state, emission = slot.state, slot.emission
        if state is None:
            return None
        self._take_view(slot)
        # Each message is made and marked sent before the send's await: the agent and
        # the flush timer run concurrently, and a state that changes during the await
        # must stay unsent, not be marked sent. The lock keeps a shard's messages in order.
        message: tuple[bytes, bytes] | None = None
        if self._rule.should_emit(emission, now_ms):
            message = (
                shard_key(shard),
                SketchSnapshot.from_state(state, now_ms, self._rule.urgent(emission)).to_bytes(),
            )
            emission.mark_emitted(now_ms, state.sketch)
            size = len(message[1])
            self.snapshots_sent += 1
            self.snapshot_bytes_sent += size
            self.snapshots_sent_by_shard[shard] = self.snapshots_sent_by_shard.get(shard, 0) + 1
            self.snapshot_bytes_by_shard[shard] = self.snapshot_bytes_by_shard.get(shard, 0) + size
            self.last_snapshot_ms_by_shard[shard] = now_ms
        elif self._rule.should_heartbeat(emission, now_ms):
            # Header only: "alive, ingested this far"; silence then means a dead shard.
            progress = ShardProgress(shard, max(emission.emitted_n, 0), state.n, state.last_offset, now_ms)
            message = (progress_key(shard), progress.to_bytes())
            emission.mark_heartbeat(now_ms)
            self.heartbeats_sent += 1
        # When to look again without new input (a batch or a newer record looks sooner).
        self._schedule.touched(shard, self._rule.next_due_ms(emission), emission.changed)
        return message

    async def _flush(self) -> None:
        if self._app.rebalancing or getattr(self._app, "in_recovery", False):
            return
        started = time.perf_counter()
        now_ms = self._clock()
        # A newer record is re-checked by the shards with unsent numbers only: a shard
        # with nothing unsent cannot be over budget, and takes the record when next looked at.
        self._latest_view()
        plan = self._schedule.plan(now_ms)
        announce = set(plan.announce)
        # The tick's own work, without the awaits (sends, hand-backs) during which other tasks run:
        # what a tick costs the event loop. Faust's "overlapping" warning counts the awaits too.
        # The longest stretch between two awaits is how long the tick held the loop.
        own, held, resumed, looked = 0.0, 0.0, started, 0
        for looked, shard in enumerate(chain(plan.recheck, plan.announce, plan.due), 1):
            # Looked up after each hand-back too: a shard revoked meanwhile is skipped.
            slot = self._slots.get(shard)
            if slot is not None and slot.state is None and shard in announce:
                self._restore(shard, slot, now_ms)
            message = self._evaluate(shard, slot, now_ms) if slot is not None else None
            if message is not None or looked % YIELD_EVERY == 0:
                stretch = time.perf_counter() - resumed
                own, held = own + stretch, max(held, stretch)
                await (self._send(message) if message is not None else asyncio.sleep(0))
                resumed = time.perf_counter()
        self._announced += len(plan.announce)
        if self._assigned and not self._schedule.pending_announcements:
            self._log_takeover()
        stretch = time.perf_counter() - resumed
        self._ticks.add(own + stretch, max(held, stretch), time.perf_counter() - started, looked)

    def _restore(self, shard: int, slot: _Slot, now_ms: int) -> None:
        # Newly assigned: announce its restored state once, so the aggregator has it even
        # if no new number ever arrives on this shard (read here, between two hand-backs,
        # not for a whole tick's announcements at once). None stored: an empty shard,
        # loaded by its first batch.
        stored = self._table.get(shard_key(shard))
        if stored:
            slot.state = ShardState.from_bytes(stored)
            slot.emission.observe(slot.state.n, slot.state.last_offset, now_ms=now_ms)

    def _log_takeover(self) -> None:
        # One line per rebalance (the per-shard lines are DEBUG: 10,000 of them per takeover).
        logger.info(
            "loaded %d newly assigned shards' state in %.1f s (%d announced by the timer, the rest by a batch)",
            self._assigned, time.monotonic() - self._assigned_at, min(self._announced, self._assigned),
        )  # fmt: skip
        self._announced = self._assigned = 0

    async def _on_assigned(self, _sender: AppT, assigned: set[TP], **_kwargs: Any) -> None:
        # The full assignment: only shards new to this worker are read and announced.
        owned_now = {tp.partition for tp in assigned if tp.topic == self._numbers_topic}
        # A shard revoked by the last rebalance and handed back by this one keeps its slot:
        # Faust revokes every partition at a rebalance, and re-announcing all of them made
        # a takeover cost every shard of the survivor, not only the ones it took over.
        # _resume_offset checks the kept state against the stored one after recovery.
        for shard in self._revoked_pending - owned_now:
            self._slots.pop(shard, None)
            self._schedule.revoked(shard)
        self._revoked_pending = set()
        new = 0
        for shard in owned_now:
            if shard not in self._slots:
                self._slot(shard)
                self._schedule.assigned(shard)
                new += 1
        if new:
            if not self._assigned:
                self._assigned_at = time.monotonic()
            self._assigned += new

    async def _on_revoked(self, _sender: AppT, revoked: set[TP], **_kwargs: Any) -> None:
        # Possibly ours again after this rebalance: the slots stay until the assignment says
        # (nothing reads or flushes them meanwhile: the agent and the timer wait for it).
        self._assigned = self._announced = 0  # the takeover line covers the latest assignment
        self._revoked_pending |= {tp.partition for tp in revoked if tp.topic == self._numbers_topic}


@dataclass
class _TickLog:
    """The longest flush tick in each window, logged at INFO once per window if it looked at any shard."""

    window_s: float = 10.0
    own_s: float = 0.0
    """The longest tick's own work in this window (seconds, awaits excluded)."""
    held_s: float = 0.0
    """The longest the loop was held without an await by any tick in this window."""
    wall_s: float = 0.0
    """Its wall time, the awaits included (what Faust's overlap warning counts)."""
    looked: int = 0
    """Shards it looked at."""
    since: float = field(default_factory=time.monotonic)

    def add(self, own_s: float, held_s: float, wall_s: float, looked: int) -> None:
        self.held_s = max(self.held_s, held_s)
        if own_s > self.own_s:
            self.own_s, self.wall_s, self.looked = own_s, wall_s, looked
        now = time.monotonic()
        if now - self.since >= self.window_s:
            if self.looked:
                logger.info(
                    "shards.flush, last %.0f s: longest tick %.1f ms of its own work (%d shards; %.1f ms wall);"
                    " loop held at most %.1f ms",
                    now - self.since, self.own_s * 1e3, self.looked, self.wall_s * 1e3, self.held_s * 1e3,
                )  # fmt: skip
            self.own_s = self.held_s = self.wall_s = 0.0
            self.looked = 0
            self.since = now


def _by_partition(events: Sequence[EventT[Any]]) -> dict[int, list[EventT[Any]]]:
    groups: dict[int, list[EventT[Any]]] = {}
    for event in events:
        groups.setdefault(event.message.partition, []).append(event)
    return groups
