"""Batch delivery for Faust: one event per fetched (partition, batch of records).

Faust turns every Kafka record into a message, an event, a conductor dispatch and
an ack; that per-record path, not Kafka, caps an agent at a few thousand msgs/s.
For the topics an app declares with :func:`batch_topic` (or
:func:`deliver_in_batches`), :class:`BatchConsumer` folds each partition's fetched
records into ONE message whose value is a :class:`RawBatch`; records of every
other topic are delivered one message per record, as before. Group membership,
assignment, acks, commits and table changelog routing (by the current event's
partition) stay Faust's::

    register_transport()                      # before the app builds its transport
    app = faust.App("id", broker="dmkafka://127.0.0.1:9092", ...)
    numbers = batch_topic(app, "numbers", partitions=8)   # events carry RawBatch values

Offset bookkeeping
------------------
A batch message has the offset L of its last record, and Faust acks L only. Left
alone, Faust's drain would record the batch's other offsets as a "gap" that
includes L (commits then stall on the duplicate) and expand every gap into a list
of offsets at commit time. Instead, for a batch-delivered partition:

* handing a batch to Faust sets Faust's read offset to L (no gap, nothing for the
  drain to drop) and records the batch's *span* ``L -> S``, S being where it was
  expected to start (the previous batch's L + 1, or the offset of the last seek),
  so offsets a fetch skips (transaction markers, compaction) join the next span;
* ``_new_offset`` walks the acked L's in order and moves the commit point to L + 1
  while the batch's span starts at or before it: one step per batch, no offset
  lists. An acked batch after an unacked one waits, as in Faust.

Seeks: on assignment Faust resumes the partitions, seeks them to the committed
offsets and then empties the streams' queues (``flow_control.resume()``) while its
fetcher runs on; whatever it delivers meanwhile is lost or, if the seek moved the
partition back, delivered twice. So a fetch and a seek never overlap (a lock), and
from a seek until Faust's ``resume_flow()`` batch partitions are not fetched and no
batch is handed over (one fetched before is kept for later, or dropped if the seek
moved its partition, which reads it again). Records before the offset a partition's
next batch must start at are dropped, as Faust's drain drops stale messages.

Where a partition resumes: an app may declare with :func:`resume_from_state` where
its own state says reading must continue (our shards store the last offset they
applied). After seeking to the committed offsets, batch partitions are moved there,
so a commit that ran ahead of a lost state write cannot lose records, and a state
ahead of the commit skips the re-read.

Faust internals used
--------------------
:data:`FAUST_INTERNALS` lists them (a guard test checks they exist), and relies on:
``getmany`` calling ``_to_message`` once per item of ``_wait_next_records``'s
record lists, only for what it yields; ``_drain_messages`` recording a gap when an
offset is more than one past ``_read_offset`` and dropping one below it;
``_committed_offset`` holding the next offset to read (0 stored as None);
recovery calling ``perform_seek()``, ``flow_control.resume()``, ``resume_flow()``
in that order. The public ``seek``, ``seek_wait``, ``seek_to_committed``,
``resume_flow`` and ``on_partitions_revoked`` are extended.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import ConsumerT
from faust.types.tuples import TP, ConsumerMessage

from pipeline.transport.batches import SCHEME, RawBatch, batch_topics, resume_offsets
from pipeline.transport.light_records import LightConsumerThread

__all__ = ["FAUST_INTERNALS", "BatchConsumer", "BatchTransport", "register_transport"]

logger = logging.getLogger(__name__)


FAUST_INTERNALS = (
    "faust.transport.consumer:Consumer.getmany",  # calls _to_message only for what it yields
    "faust.transport.consumer:Consumer._wait_next_records",
    "faust.transport.consumer:ThreadDelegateConsumer._getmany",
    "faust.transport.consumer:Consumer._drain_messages",  # gap and drop decisions by _read_offset
    "faust.transport.consumer:Consumer._new_offset",
    "faust.transport.consumer:Consumer._acked",  # instance attributes, declared as class annotations
    "faust.transport.consumer:Consumer._acked_index",
    "faust.transport.consumer:Consumer._committed_offset",
    "faust.transport.consumer:Consumer._read_offset",
    "faust.transport.drivers.aiokafka:Consumer._to_message",
    "faust.transport.drivers.aiokafka:Consumer._new_consumer_thread",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer",
    "aiokafka.consumer.fetcher:PartitionRecords._unpack_records",  # replaced for raw records
    "aiokafka.consumer.fetcher:READ_UNCOMMITTED",
    "faust.transport.drivers:TRANSPORTS.aliases",
    "faust.tables.recovery:Recovery._resume_streams",  # perform_seek, flow_control.resume, resume_flow
    "faust.tables.recovery:Recovery.on_recovery_completed",  # the same order
)
"""Private Faust names this module overrides or relies on (see the module docstring)."""

_OFFSET, _KEY, _VALUE = attrgetter("offset"), attrgetter("key"), attrgetter("value")
_RecordMap = Mapping[TP, list[Any]]  # Faust's RecordMap: records of a fetch per partition


@dataclass(frozen=True, slots=True)
class _Fetched:
    """One partition's records of a fetch, standing in for them in Faust's record map."""

    records: list[Any]  # aiokafka ConsumerRecord (aiokafka ships no type information)
    start: int  # first offset this batch stands for (its span's start)
    moves: int  # how often its partition had been repositioned when it was fetched


class BatchConsumer(aiokafka_driver.Consumer):
    """aiokafka consumer delivering one message per partition and fetch for batch topics."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spans: defaultdict[TP, dict[int, int]] = defaultdict(dict)  # last offset -> span start
        self._expect: dict[TP, int] = {}  # offset each batch tp's next batch starts at
        self._moves: defaultdict[TP, int] = defaultdict(int)  # seeks and revocations per tp
        self._held: dict[TP, list[Any]] = {}  # records fetched but not handed over while holding
        self._seeks_running = 0
        self._hold_until_resume = False
        self._fetch_lock = asyncio.Lock()  # a fetch and a seek never overlap

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return LightConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def wants_raw_records(self, topic: str) -> bool:
        """Whether the fetcher hands out raw records of ``topic`` (see ``light_records``)."""
        return topic in batch_topics(self.app)

    @property
    def _holding(self) -> bool:
        return self._seeks_running > 0 or self._hold_until_resume

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> _RecordMap:
        topics = batch_topics(self.app)
        if not topics:
            return await super()._getmany(active_partitions, timeout)
        async with self._fetch_lock:
            # While holding, leave batch partitions in aiokafka's hands: nothing read, nothing lost.
            if self._holding and active_partitions:
                active_partitions = {tp for tp in active_partitions if tp.topic not in topics}
                if not active_partitions:  # an empty set would mean "all partitions" to aiokafka
                    await asyncio.sleep(min(timeout, 0.05))
                    return {}
            return await super()._getmany(active_partitions, timeout)

    async def _wait_next_records(self, timeout: float) -> tuple[_RecordMap | None, set[TP] | None]:
        records, active = await super()._wait_next_records(timeout)
        topics = batch_topics(self.app)
        if topics and (records or (self._held and not self._holding)):
            records = self._fold(records or {}, topics, active)
        return records, active

    def _fold(self, records: _RecordMap, topics: frozenset[str], active: set[TP] | None) -> dict[TP, list[Any]]:
        # Faust's getmany turns each list item into a message: give it one item per batch tp.
        folded: dict[TP, list[Any]] = {}
        for tp, fetched in records.items():
            if tp.topic not in topics:
                folded[tp] = fetched
            else:
                self._add_batch(folded, tp, fetched)
        if not self._holding:
            for tp in [tp for tp in self._held if tp not in folded and (active is None or tp in active)]:
                self._add_batch(folded, tp, [])
        return folded

    def _add_batch(self, folded: dict[TP, list[Any]], tp: TP, fetched: list[Any]) -> None:
        held = self._held.pop(tp, None)
        records = held + fetched if held else fetched
        expected = self._expect.get(tp)
        if expected is not None and records and records[0].offset < expected:
            kept = [record for record in records if record.offset >= expected]
            logger.info("%s: dropped %d records before offset %d", tp, len(records) - len(kept), expected)
            records = kept
        if records:
            folded[tp] = [_Fetched(records, records[0].offset if expected is None else expected, self._moves[tp])]

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        if not isinstance(record, _Fetched):
            return super()._to_message(tp, record)
        records = record.records
        last = records[-1]
        # Called only for what getmany yields: a fetch abandoned on a rebalance leaves no trace.
        if record.moves != self._moves[tp] or self._holding:
            # Not now: a seek moved the partition since (it reads these again), or one is
            # under way (keep them for later). With the read offset past L, the drain drops it.
            if record.moves == self._moves[tp]:
                self._held[tp] = records + self._held.get(tp, [])
            self._read_offset[tp] = last.offset + 1
        else:
            self._spans[tp][last.offset] = record.start
            self._expect[tp] = last.offset + 1
            # The batch is read: with the read offset at L, Faust's drain neither records
            # a gap (which would include L itself) nor drops the message.
            self._read_offset[tp] = last.offset
        # map/attrgetter: the per-record cost here bounds the rate (~0.35 us vs 0.5 us a record).
        values = list(map(_VALUE, records))
        batch = RawBatch(list(map(_OFFSET, records)), list(map(_KEY, records)), values)
        timestamp: float = last.timestamp / 1000.0  # aiokafka: ms since the epoch, always set
        return ConsumerMessage(
            topic=tp.topic,  # raw records carry neither topic nor partition
            partition=tp.partition,
            offset=last.offset,
            timestamp=timestamp,
            timestamp_type=last.timestamp_type,
            headers=[],
            key=None,
            value=batch,  # type: ignore[arg-type]  # typed bytes by Faust; RawBatchSchema passes it on
            checksum=None,
            serialized_key_size=0,
            serialized_value_size=sum(map(len, filter(None, values))),
            tp=tp,
            generation_id=self.app.consumer_generation_id,
        )

    def _new_offset(self, tp: TP) -> int | None:
        if tp.topic not in batch_topics(self.app):
            return super()._new_offset(tp)
        acked = self._acked[tp]
        if not acked:
            return None
        acked.sort()
        spans = self._spans[tp]
        committed = self._committed_offset[tp]
        # Nothing committed yet (or offset 0, which Faust stores as None): the
        # earliest batch still tracked is where the partition started.
        cursor = committed if committed is not None else min(spans.values(), default=acked[0])
        done = 0
        for last in acked:
            if spans.get(last, last) > cursor:
                break  # an earlier batch is not acked yet
            cursor = max(cursor, last + 1)
            done += 1
        if not done:
            return None
        finished = acked[:done]
        del acked[:done]
        self._acked_index[tp].difference_update(finished)
        for last in [last for last in spans if last < cursor]:  # also spans superseded by a seek
            del spans[last]
        return cursor

    @asynccontextmanager
    async def _seeking(self) -> AsyncIterator[None]:
        # Waits for a fetch under way, so every fetch is known to precede or follow the seek.
        self._seeks_running += 1
        try:
            async with self._fetch_lock:
                yield
        finally:
            self._seeks_running -= 1

    def _moved(self, targets: Mapping[TP, int]) -> None:
        # Partitions a seek moved: what was fetched of them before is read again from ``offset``.
        topics = batch_topics(self.app)
        for tp, offset in targets.items():
            if offset >= 0 and tp.topic in topics:
                self._moves[tp] += 1
                self._held.pop(tp, None)
                self._expect[tp] = offset

    async def seek(self, partition: TP, offset: int) -> None:
        async with self._seeking():
            await super().seek(partition, offset)
            self._moved({partition: offset})

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        async with self._seeking():
            await super().seek_wait(partitions)
            self._moved(partitions)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        async with self._seeking():
            committed = self._resume_where_state_says(await super().seek_to_committed())
            # aiokafka moves only partitions with a committed offset above 0.
            self._moved({tp: offset for tp, offset in committed.items() if offset and offset > 0})
            # Faust follows perform_seek with app.flow_control.resume(), which empties the
            # streams' queues, then resume_flow(): hold batches until then, or they are lost.
            self._hold_until_resume = True
        return committed

    def _resume_where_state_says(self, committed: Mapping[TP, int]) -> dict[TP, int]:
        # The app's state, not the group's commit, says what was applied: a commit can
        # run ahead of a changelog write that never landed (a stop or a rebalance
        # between the two), and reading on from the commit would lose those records.
        positions = dict(committed)
        resume = resume_offsets(self.app)
        if resume is None:
            return positions
        topics = batch_topics(self.app)
        for tp in self.assignment():
            offset = resume(tp) if tp.topic in topics else None
            if offset is None or offset == committed.get(tp):
                continue
            behind = committed.get(tp) is not None and offset < committed[tp]
            log = logger.warning if behind else logger.info
            log("%s: resuming at offset %d from the stored state (committed: %s)", tp, offset, committed.get(tp))
            self._thread.seek(tp, offset)
            positions[tp] = offset
        return positions

    def resume_flow(self) -> None:
        self._hold_until_resume = False
        super().resume_flow()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self._moves[tp] += 1  # in-flight batches of it are no longer ours
            self._spans.pop(tp, None)
            self._expect.pop(tp, None)
            self._held.pop(tp, None)


class BatchTransport(aiokafka_driver.Transport):
    """Faust's aiokafka transport with :class:`BatchConsumer`; URL scheme ``dmkafka://``."""

    Consumer: ClassVar[type[ConsumerT]] = BatchConsumer


def register_transport() -> None:
    """Make ``dmkafka://`` broker URLs use :class:`BatchTransport` (idempotent)."""
    TRANSPORTS.aliases[SCHEME] = f"{__name__}:{BatchTransport.__name__}"
