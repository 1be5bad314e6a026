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
A batch message has the offset L of its last record, and Faust acks L only: see
:mod:`pipeline.transport.spans` for how the commit point moves one batch at a time.

Seeks: on assignment Faust resumes the partitions, seeks them to the committed
offsets and then empties the streams' queues (``flow_control.resume()``) while its
fetcher runs on; whatever it delivers meanwhile is lost or, if the seek moved the
partition back, delivered twice. So from a seek's start until Faust's
``resume_flow()`` batch partitions are not fetched and no batch is handed over (one
fetched before is kept for later, or dropped if the seek moved its partition, which
reads it again), and a seek's bookkeeping waits for a fetch under way (a lock; not
held across the consumer thread's seek: at a rebalance that thread waits for this
loop's revocation, which takes the lock too, for at most 5 s). A seek that a
revocation overtook places nothing. Records before the offset a partition's
next batch must start at are dropped, as Faust's drain drops stale messages.

Where a partition resumes: an app may declare with :func:`resume_from_state` where
its own state says reading must continue (our shards store the last offset they
applied). After seeking to the committed offsets, partitions are moved there (those
of per-record topics too: Faust's read offset follows what ``seek_to_committed`` returns),
so a commit that ran ahead of a lost state write cannot lose records, and a state
ahead of the commit skips the re-read.

Fetching with librdkafka
------------------------
With :func:`fetch_with_librdkafka` declared, batch partitions are fetched by a
:class:`~pipeline.transport.rdkafka_fetch.RdkafkaFetcher` (librdkafka's C threads)
instead of aiokafka, which keeps them paused and goes on with everything else:
group membership, assignment, commits, changelogs and per-record topics. The rules
above hold as they are: librdkafka fetches a partition only from the offset
``seek_to_committed`` decided (committed, then the app's state) and only while not
holding, every seek moves it there under the fetch lock, and a revocation stops
its fetching before Faust's revoke handling runs.

Faust internals used
--------------------
:data:`~pipeline.transport.faust_internals.FAUST_INTERNALS` lists them (a guard
test checks they exist), and relies on:
``getmany`` calling ``_to_message`` once per item of ``_wait_next_records``'s
record lists, only for what it yields; ``_drain_messages`` recording a gap when an
offset is more than one past ``_read_offset`` and dropping one below it;
``_committed_offset`` holding the next offset to read (0 stored as None);
recovery calling ``perform_seek()``, ``flow_control.resume()``, ``resume_flow()``
in that order. The public ``seek``, ``seek_wait``, ``seek_to_committed``,
``resume_flow``, ``on_partitions_revoked``, ``highwater`` and ``on_stop`` are extended.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import ConsumerT
from faust.types.tuples import TP, ConsumerMessage

from pipeline.transport.batches import SCHEME, RawBatch, batch_topics, librdkafka_consumer, resume_offsets
from pipeline.transport.changelog_pauses import mirror_changelog_pauses
from pipeline.transport.columns import Columns, Fetched, columns_of
from pipeline.transport.faust_internals import FAUST_INTERNALS
from pipeline.transport.fetch_gate import FetchGate
from pipeline.transport.light_records import LightConsumerThread
from pipeline.transport.rdkafka_fetch import RdkafkaFetcher
from pipeline.transport.spans import advance_commit

__all__ = ["FAUST_INTERNALS", "BatchConsumer", "BatchTransport", "register_transport"]

logger = logging.getLogger(__name__)


_RecordMap = Mapping[TP, list[Any]]  # Faust's RecordMap: records of a fetch per partition

# How long a librdkafka fetch waits for records when nothing else is to be read,
# and how long aiokafka waits for the other topics when librdkafka had nothing:
# bounds on how long a seek or a revocation waits for the fetch lock.
_RDKAFKA_WAIT_S = 0.2
_OTHERS_WAIT_S = 0.05


class BatchConsumer(aiokafka_driver.Consumer):
    """aiokafka consumer delivering one message per partition and fetch for batch topics."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._spans: defaultdict[TP, dict[int, int]] = defaultdict(dict)  # last offset -> span start
        self._expect: dict[TP, int] = {}  # offset each batch tp's next batch starts at
        self._moves: defaultdict[TP, int] = defaultdict(int)  # seeks and revocations per tp
        self._held: dict[TP, Columns] = {}  # records fetched but not handed over while holding
        self._hold_until_resume = False
        self._gate = FetchGate()  # a fetch and a seek's bookkeeping never overlap
        self._rdkafka: RdkafkaFetcher | None = None
        self._fetcher_chosen = False
        self._pause_calls: set[asyncio.Future[Any]] = set()  # changelog pauses on their way to aiokafka

    def _librdkafka(self) -> RdkafkaFetcher | None:
        # Chosen once, on first use: the app declares it after building, before starting.
        if not self._fetcher_chosen:
            self._fetcher_chosen = True
            new_consumer = librdkafka_consumer(self.app)
            if new_consumer is not None and batch_topics(self.app):
                self._rdkafka = RdkafkaFetcher.for_app(self.app, new_consumer, transactions=self.in_transaction)
            if batch_topics(self.app):
                logger.info("batch topics are fetched with %s", "aiokafka" if self._rdkafka is None else "librdkafka")
        return self._rdkafka

    def pause_partitions(self, tps: Iterable[TP]) -> None:
        tps = list(tps)
        super().pause_partitions(tps)
        mirror_changelog_pauses(self._thread, self.app.tables.changelog_topics, tps, self._pause_calls, pause=True)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        tps = list(tps)
        super().resume_partitions(tps)
        mirror_changelog_pauses(self._thread, self.app.tables.changelog_topics, tps, self._pause_calls, pause=False)

    def fetched_elsewhere(self, partitions: set[TP]) -> set[TP]:
        """Of ``partitions``, those librdkafka fetches: aiokafka keeps them paused."""
        if self._librdkafka() is None:
            return set()
        topics = batch_topics(self.app)
        return {tp for tp in partitions if tp.topic in topics}

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return LightConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def wants_raw_records(self, topic: str) -> bool:
        """Whether the fetcher hands out raw records of ``topic`` (see ``light_records``)."""
        return topic in batch_topics(self.app)

    @property
    def _holding(self) -> bool:
        return self._gate.seeking or self._hold_until_resume

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> _RecordMap:
        topics = batch_topics(self.app)
        if not topics:
            return await super()._getmany(active_partitions, timeout)
        rdkafka = self._librdkafka()
        if rdkafka is not None:
            return await self._getmany_rdkafka(rdkafka, topics, active_partitions, timeout)
        async with self._gate.lock:
            # While holding, leave batch partitions in aiokafka's hands: nothing read, nothing lost.
            if self._holding and active_partitions:
                active_partitions = {tp for tp in active_partitions if tp.topic not in topics}
                if not active_partitions:  # an empty set would mean "all partitions" to aiokafka
                    await asyncio.sleep(min(timeout, 0.05))
                    return {}
            return await super()._getmany(active_partitions, timeout)

    async def _getmany_rdkafka(
        self, rdkafka: RdkafkaFetcher, topics: frozenset[str], active: set[TP] | None, timeout: float
    ) -> _RecordMap:
        # Batch partitions from librdkafka, the others from aiokafka: whichever is idle
        # waits no longer than a moment while the other may have records. Only the first,
        # and its bookkeeping, hold the fetch lock: aiokafka's fetch runs on the consumer
        # thread, which at a rebalance waits for this loop's revocation, and the revocation
        # waits for the lock (a takeover at 8,192 shards lost the revocation's whole 5 s).
        others = {tp for tp in (self.assignment() if active is None else active) if tp.topic not in topics}
        async with self._gate.lock:
            fetched: dict[TP, Columns] = {}
            if not self._holding:
                wait = 0.0 if others else min(timeout, _RDKAFKA_WAIT_S)
                fetched = await rdkafka.fetch(self._paused_partitions, wait)
            records = self._hand_over(fetched, active)
        if others:
            records.update(await super()._getmany(others, 0.0 if fetched else min(timeout, _OTHERS_WAIT_S)))
        elif not fetched and self._holding:
            await asyncio.sleep(min(timeout, _OTHERS_WAIT_S))
        return records

    def _hand_over(self, fetched: Mapping[TP, Columns], active: set[TP] | None) -> dict[TP, list[Any]]:
        # Faust's getmany yields active and buffer-full partitions only: keep the others'
        # records (a pause that came during the fetch) until they are again.
        records: dict[TP, list[Any]] = {}
        buffered = self._buffered_partitions
        for tp, columns in fetched.items():
            if active is None or tp in active or tp in buffered:
                self._add_batch(records, tp, columns)
            else:
                held = self._held.get(tp)
                self._held[tp] = held.then(columns) if held else columns
        if not self._holding:
            for tp in [tp for tp in self._held if tp not in records and (active is None or tp in active)]:
                self._add_batch(records, tp, None)
        return records

    async def _wait_next_records(self, timeout: float) -> tuple[_RecordMap | None, set[TP] | None]:
        records, active = await super()._wait_next_records(timeout)
        topics = batch_topics(self.app)
        if self._rdkafka is not None:
            return records, active  # folded as fetched
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
                self._add_batch(folded, tp, columns_of(fetched))
        if not self._holding:
            for tp in [tp for tp in self._held if tp not in folded and (active is None or tp in active)]:
                self._add_batch(folded, tp, None)
        return folded

    def _add_batch(self, folded: dict[TP, list[Any]], tp: TP, fetched: Columns | None) -> None:
        held = self._held.pop(tp, None)
        columns = held.then(fetched) if held and fetched else held or fetched
        if columns is None:
            return
        expected = self._expect.get(tp)
        if expected is not None:
            kept = columns.from_offset(expected)
            if kept is not columns:
                logger.info("%s: dropped %d records before offset %d", tp, len(columns) - len(kept or ()), expected)
            columns = kept
        if columns:
            start = columns.offsets[0] if expected is None else expected
            folded[tp] = [Fetched(columns, start, self._moves[tp])]

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        if not isinstance(record, Fetched):
            return super()._to_message(tp, record)
        columns = record.columns
        last = columns.offsets[-1]
        # Called only for what getmany yields: a fetch abandoned on a rebalance leaves no trace.
        if record.moves != self._moves[tp] or self._holding:
            # Not now: a seek moved the partition since (it reads these again), or one is
            # under way (keep them for later). With the read offset past L, the drain drops it.
            if record.moves == self._moves[tp]:
                held = self._held.get(tp)
                self._held[tp] = columns.then(held) if held else columns
            self._read_offset[tp] = last + 1
        else:
            self._spans[tp][last] = record.start
            self._expect[tp] = last + 1
            # The batch is read: with the read offset at L, Faust's drain neither records
            # a gap (which would include L itself) nor drops the message.
            self._read_offset[tp] = last
        values = columns.values
        batch = RawBatch(columns.offsets, columns.keys, values)
        return ConsumerMessage(
            topic=tp.topic,  # raw records carry neither topic nor partition
            partition=tp.partition,
            offset=last,
            timestamp=columns.timestamp_ms / 1000.0,
            timestamp_type=columns.timestamp_type,
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
        cursor, finished = advance_commit(self._acked[tp], self._spans[tp], self._committed_offset[tp])
        self._acked_index[tp].difference_update(finished)
        return cursor

    async def _moved(self, targets: Mapping[TP, int | None], revocations: int) -> None:
        # Partitions a seek moved: what was fetched of them before is read again from
        # the offset (None: where the reset policy says, known when it arrives). After a
        # fetch under way, so every fetch is known to precede or follow the seek; the
        # consumer thread's seek itself ran without the lock (pipeline/transport/fetch_gate.py).
        async with self._gate.lock:
            if self._gate.overtaken(revocations):
                return  # a rebalance overtook this seek: its partitions may be another worker's now
            topics = batch_topics(self.app)
            moved = {tp: offset for tp, offset in targets.items() if tp.topic in topics}
            if self._rdkafka is not None:
                await self._rdkafka.place(moved)
            for tp, offset in moved.items():
                self._moves[tp] += 1
                self._held.pop(tp, None)
                if offset is not None and offset >= 0:
                    self._expect[tp] = offset
                else:
                    self._expect.pop(tp, None)

    def _fetched_by_rdkafka(self, targets: Mapping[TP, int]) -> dict[TP, int]:
        # Seeks of partitions librdkafka does not fetch (yet) wait for seek_to_committed.
        rdkafka = self._rdkafka
        return {tp: offset for tp, offset in targets.items() if rdkafka is None or tp in rdkafka.assigned}

    async def seek(self, partition: TP, offset: int) -> None:
        async with self._gate.seek() as revocations:
            await super().seek(partition, offset)
            await self._moved(self._fetched_by_rdkafka({partition: offset}), revocations)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        async with self._gate.seek() as revocations:
            await super().seek_wait(partitions)
            await self._moved(self._fetched_by_rdkafka(partitions), revocations)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        rdkafka = self._librdkafka()
        async with self._gate.seek() as revocations:
            committed = self._resume_where_state_says(await super().seek_to_committed())
            if rdkafka is None:
                # aiokafka moves only partitions with a committed offset above 0.
                moved = {tp: offset for tp, offset in committed.items() if offset and offset > 0}
                await self._moved(moved, revocations)
            else:
                # librdkafka starts every assigned batch partition here, and only here.
                topics = batch_topics(self.app)
                placed = {tp: committed.get(tp) for tp in self.assignment() if tp.topic in topics}
                await self._moved(placed, revocations)
                self._give_aiokafka_positions(placed)
            # Faust follows perform_seek with app.flow_control.resume(), which empties the
            # streams' queues, then resume_flow(): hold batches until then, or they are lost.
            self._hold_until_resume = True
        return committed

    def _give_aiokafka_positions(self, placed: Mapping[TP, int | None]) -> None:
        # aiokafka keeps librdkafka's partitions paused, but its fetcher looks up the
        # committed offset of every assigned partition without a position, one partition
        # per request, before it even looks at the pause: at 8,192 partitions that was
        # 8,192 round trips, each scanning the whole assignment on the consumer thread,
        # and it starved the event loop for as long as they lasted. A position (where
        # librdkafka starts, 0 where nothing was committed) costs no request, and aiokafka
        # never fetches from it while the partition stays paused.
        for tp, offset in placed.items():
            if not offset:  # None (nothing committed) or 0: seek_to_committed moved only those above 0
                self._thread.seek(tp, 0)

    def _resume_where_state_says(self, committed: Mapping[TP, int]) -> dict[TP, int]:
        # The app's state, not the group's commit, says what was applied: a commit can
        # run ahead of a changelog write that never landed (a stop or a rebalance
        # between the two), and reading on from the commit would lose those records.
        positions = dict(committed)
        resume = resume_offsets(self.app)
        if resume is None:
            return positions
        # Every assigned partition, batch-delivered or not: the callback names the ones it keeps state for.
        for tp in self.assignment():
            offset = resume(tp)
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
        self._gate.revoked()
        if self._rdkafka is not None:
            # Stop fetching them first (after a fetch under way): another worker reads them next.
            async with self._gate.locked_for_revocation():
                await self._rdkafka.drop(revoked)
                for tp in revoked:
                    self._moves[tp] += 1
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self._moves[tp] += 1  # in-flight batches of it are no longer ours
            self._spans.pop(tp, None)
            self._expect.pop(tp, None)
            self._held.pop(tp, None)

    def highwater(self, tp: TP) -> int:
        rdkafka = self._rdkafka
        if rdkafka is not None and tp in rdkafka.assigned:
            end: Any = rdkafka.highwater(tp)  # None until fetched, as aiokafka's
            return end  # type: ignore[no-any-return]
        return super().highwater(tp)

    async def on_stop(self) -> None:
        await super().on_stop()
        if self._rdkafka is not None:
            async with self._gate.lock:
                await self._rdkafka.close()


class BatchTransport(aiokafka_driver.Transport):
    """Faust's aiokafka transport with :class:`BatchConsumer`; URL scheme ``dmkafka://``."""

    Consumer: ClassVar[type[ConsumerT]] = BatchConsumer


def register_transport() -> None:
    """Make ``dmkafka://`` broker URLs use :class:`BatchTransport` (idempotent)."""
    TRANSPORTS.aliases[SCHEME] = f"{__name__}:{BatchTransport.__name__}"
