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
A batch message has the offset L of its last record, so Faust acks L only. Left
alone, Faust's drain would record the batch's other offsets as a "gap" that
includes L itself (commits then stall on the duplicate) and expand every gap into
a Python list of offsets at commit time. Instead, for a batch-delivered partition:

* when a batch message is handed to Faust, the consumer sets Faust's read offset to
  L (the batch is read: no gap, nothing for the drain to drop) and records the
  batch's *span* ``L -> S``. S is where the batch was expected to start: the
  previous batch's L + 1, or the offset of the last seek, so offsets a fetch skips
  (transaction markers, compaction) belong to the next span;
* ``_new_offset`` walks the acked L's in order and moves the commit point to
  L + 1 while the batch's span starts at or before it: one step per batch, no
  per-offset lists. An acked batch after an unacked one waits, as in Faust;
* every seek (``seek``, ``seek_wait``, ``seek_to_committed``) and revocation
  resets the expectation, and bumps an epoch: a batch fetched before a seek but
  handed over after it (Faust then drops it from its queues and the seek re-reads
  it) does not move the expectation. Records before the expected offset are
  dropped, as Faust's drain drops stale messages.

Faust internals used
--------------------
Listed in :data:`FAUST_INTERNALS` (a guard test checks they still exist):
``Consumer._wait_next_records`` (returns ``(records, active_partitions)``;
``Consumer.getmany`` then calls ``_to_message(tp, record)`` once per list item, only
for what it yields), ``Consumer._new_offset`` (called at commit), the attributes
``_acked``, ``_acked_index``, ``_committed_offset`` (next offset to read; 0 is stored
as None) and ``_read_offset`` (``_drain_messages`` records a gap when a message's
offset is more than one past it and drops messages below it), ``ConsumerMessage``'s
fields, and the transport registry ``faust.transport.drivers.TRANSPORTS`` (a
``FactoryMapping``). The public ``seek``, ``seek_wait``, ``seek_to_committed`` and
``on_partitions_revoked`` are extended to reset this module's own state.
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar

import faust
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import AppT, ConsumerT, TopicT
from faust.types.tuples import TP, ConsumerMessage, Message

__all__ = [
    "FAUST_INTERNALS",
    "SCHEME",
    "BatchConsumer",
    "BatchTransport",
    "RawBatch",
    "RawBatchSchema",
    "batch_topic",
    "batch_topics",
    "deliver_in_batches",
    "register_transport",
]

logger = logging.getLogger(__name__)

SCHEME = "dmkafka"
"""Broker URL scheme of :class:`BatchTransport` (``dmkafka://host:port``)."""

FAUST_INTERNALS = (
    "faust.transport.consumer:Consumer.getmany",  # calls _to_message only for what it yields
    "faust.transport.consumer:Consumer._wait_next_records",
    "faust.transport.consumer:Consumer._drain_messages",  # gap and drop decisions by _read_offset
    "faust.transport.consumer:Consumer._new_offset",
    "faust.transport.consumer:Consumer._acked",  # instance attributes, declared as class annotations
    "faust.transport.consumer:Consumer._acked_index",
    "faust.transport.consumer:Consumer._committed_offset",
    "faust.transport.consumer:Consumer._read_offset",
    "faust.transport.drivers.aiokafka:Consumer._to_message",
    "faust.transport.drivers:TRANSPORTS.aliases",
)
"""Private Faust names this module overrides or relies on (see the module docstring)."""

# Faust's Settings silently drops unknown keys, so the app's batch-delivered topic
# names live here, keyed weakly by the app (tests build many apps in one process).
_BATCH_TOPICS: weakref.WeakKeyDictionary[AppT, frozenset[str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class RawBatch:
    """The records of one partition from one fetch, in offset order: an event's value."""

    offsets: list[int]
    """Source offset of each record (strictly increasing)."""
    keys: list[bytes | None]
    """Undecoded key of each record."""
    values: list[bytes | None]
    """Undecoded value of each record."""

    def __len__(self) -> int:
        return len(self.offsets)


class RawBatchSchema(faust.Schema[bytes | None, RawBatch]):
    """Schema of a batch-delivered topic: hands the :class:`RawBatch` over undecoded.

    A plain record on such a topic means the app does not use :class:`BatchTransport`;
    that raises TypeError (the worker crashes) rather than dropping data as a decode error.
    """

    def __init__(self) -> None:
        # Raw codecs, so that sending plain bytes to the topic still works. A value type
        # of its own keeps the conductor from sharing RawBatch events with a plain
        # bytes channel on the same topic (it reuses events per (key, value) type).
        super().__init__(
            key_type=bytes,
            value_type=RawBatch,  # type: ignore[arg-type]  # Faust's stubs list only models, bytes, str
            key_serializer="raw",
            value_serializer="raw",
        )

    # Faust's signatures, so the unused parameters stay.
    def loads_key(self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None) -> bytes | None:  # noqa: ARG002
        return message.key

    def loads_value(self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None) -> RawBatch:  # noqa: ARG002
        value: object = message.value  # typed bytes by Faust; a RawBatch here
        if not isinstance(value, RawBatch):
            raise TypeError(f"{message.topic}: expected a RawBatch (is the broker URL {SCHEME}://?), got {value!r:.60}")
        return value


def deliver_in_batches(app: AppT, topics: Iterable[str]) -> None:
    """Declare ``topics`` batch-delivered for ``app`` (adds to any declared before)."""
    _BATCH_TOPICS[app] = _BATCH_TOPICS.get(app, frozenset()) | frozenset(topics)


def batch_topics(app: AppT) -> frozenset[str]:
    """The topic names ``app`` declared batch-delivered."""
    return _BATCH_TOPICS.get(app, frozenset())


def batch_topic(app: AppT, name: str, **options: Any) -> TopicT:
    """Declare ``name`` batch-delivered and return its topic (``options`` go to ``app.topic``)."""
    deliver_in_batches(app, [name])
    return app.topic(name, schema=RawBatchSchema(), **options)


_OFFSET, _KEY, _VALUE = attrgetter("offset"), attrgetter("key"), attrgetter("value")


@dataclass(frozen=True, slots=True)
class _Fetched:
    """One partition's records of a fetch, standing in for them in Faust's record map."""

    records: list[Any]  # aiokafka ConsumerRecord (aiokafka ships no type information)
    start: int  # first offset this batch stands for (its span's start)
    epoch: int  # the consumer's seek epoch when it was fetched


class BatchConsumer(aiokafka_driver.Consumer):
    """aiokafka consumer delivering one message per partition and fetch for batch topics."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spans: defaultdict[TP, dict[int, int]] = defaultdict(dict)  # last offset -> span start
        self._expect: dict[TP, int] = {}  # offset each batch tp's next batch should start at
        self._epoch = 0  # bumped by every seek: batches fetched before it must not move _expect

    async def _wait_next_records(self, timeout: float) -> tuple[Mapping[TP, list[Any]] | None, set[TP] | None]:
        records, active_partitions = await super()._wait_next_records(timeout)
        topics = batch_topics(self.app)
        if records and topics:
            records = self._fold(records, topics)
        return records, active_partitions

    def _fold(self, records: Mapping[TP, list[Any]], topics: frozenset[str]) -> dict[TP, list[Any]]:
        # Faust's getmany turns each list item into a message: give it one item per batch tp.
        folded: dict[TP, list[Any]] = {}
        for tp, fetched in records.items():
            if tp.topic not in topics:
                folded[tp] = fetched
                continue
            expected = self._expect.get(tp)
            kept = fetched
            if expected is not None and fetched and fetched[0].offset < expected:
                kept = [record for record in fetched if record.offset >= expected]
                logger.info("%s: dropped %d records before offset %d", tp, len(fetched) - len(kept), expected)
            if kept:
                folded[tp] = [_Fetched(kept, kept[0].offset if expected is None else expected, self._epoch)]
        return folded

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        if not isinstance(record, _Fetched):
            return super()._to_message(tp, record)
        records = record.records
        last = records[-1]
        # Called only when getmany yields the message: a fetch abandoned on a rebalance
        # leaves no trace. One fetched before a seek but yielded after it must not move
        # the expectation the seek set (Faust may drop it, and the seek re-reads it).
        self._spans[tp][last.offset] = record.start
        if record.epoch == self._epoch:
            self._expect[tp] = last.offset + 1
        # The batch's records are read: with the read offset at L, Faust's drain neither
        # records a gap (which would include L itself) nor drops the message.
        self._read_offset[tp] = last.offset
        # map/attrgetter: the per-record cost here bounds the rate (~0.35 us vs 0.5 us a record).
        values = list(map(_VALUE, records))
        batch = RawBatch(list(map(_OFFSET, records)), list(map(_KEY, records)), values)
        timestamp: float = last.timestamp / 1000.0  # aiokafka: ms since the epoch, always set
        return ConsumerMessage(
            topic=last.topic,
            partition=last.partition,
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

    def _seeking(self, tps: Iterable[TP] | None, targets: Mapping[TP, int | None] | None = None) -> None:
        # Around a seek: while it runs, expect nothing (re-reading beats losing); after
        # it, expect the seek target (None or negative: where aiokafka resets to).
        self._epoch += 1
        for tp in list(self._expect) if tps is None else tps:
            self._expect.pop(tp, None)
        for tp, offset in (targets or {}).items():
            if offset is not None and offset >= 0 and tp.topic in batch_topics(self.app):
                self._expect[tp] = offset

    async def seek(self, partition: TP, offset: int) -> None:
        self._seeking([partition])
        await super().seek(partition, offset)
        self._seeking([partition], {partition: offset})

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        self._seeking(partitions)
        await super().seek_wait(partitions)
        self._seeking(partitions, partitions)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        # Faust's perform_seek: aiokafka seeks only where an offset > 0 is committed.
        self._seeking(None)
        committed = await super().seek_to_committed()
        self._seeking(None, {tp: offset for tp, offset in committed.items() if offset})
        return committed

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)
        self._seeking(revoked)
        for tp in revoked:
            self._spans.pop(tp, None)


class BatchTransport(aiokafka_driver.Transport):
    """Faust's aiokafka transport with :class:`BatchConsumer`; URL scheme ``dmkafka://``."""

    Consumer: ClassVar[type[ConsumerT]] = BatchConsumer


def register_transport() -> None:
    """Make ``dmkafka://`` broker URLs use :class:`BatchTransport` (idempotent)."""
    TRANSPORTS.aliases[SCHEME] = f"{__name__}:{BatchTransport.__name__}"
