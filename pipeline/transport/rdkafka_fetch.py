"""Fetching batch-delivered partitions with librdkafka (confluent-kafka), for the batch consumer.

aiokafka reads and parses fetch responses in Python, on the event loop's GIL; with
one record per number or a block of a thousand, that, not the sketch, capped a
worker. librdkafka fetches and parses in its own C threads, ahead of the app (up to
``queued.max.messages.kbytes``), and ``consume()`` hands over thousands of records
in one call.

:class:`RdkafkaFetcher` is only a fetcher: a ``confluent_kafka.Consumer`` used with
``incremental_assign()``, never ``subscribe()``, that never commits. Group
membership, assignment and commits stay with Faust's aiokafka consumer, which
decides where each partition starts (:meth:`place`) and when it goes (:meth:`drop`).
Every call on the client runs on one thread of its own, so the calls happen in the
order they are made and ``consume()``'s wait never blocks the event loop; the batch
consumer makes them under its fetch lock, so a fetch never overlaps a placement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from itertools import compress, pairwise
from operator import ne
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition
from faust.types import AppT
from faust.types.tuples import TP

from pipeline.transport.batches import NewConsumer
from pipeline.transport.columns import Columns

__all__ = ["RdkafkaFetcher", "by_partition"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Unbound C methods: map() calls them without a Python frame per record.
_ERROR, _TOPIC, _PARTITION = Message.error, Message.topic, Message.partition
_OFFSET, _KEY, _VALUE = Message.offset, Message.key, Message.value

_ERROR_LOG_EVERY_S = 30.0
_CONNECT_WAIT_S = 2.0


class RdkafkaFetcher:
    """A librdkafka consumer that fetches the partitions it is told to, where it is told to."""

    def __init__(self, new_consumer: NewConsumer, options: Mapping[str, Any], max_records: int) -> None:
        # ``options``: group.id (required by the client, never joined) and the app's fetch settings.
        self._new_consumer = new_consumer
        self._config = dict(options) | {
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            # librdkafka stops fetching a partition whose queue is full (queued.min.messages,
            # queued.max.messages.kbytes) and, by default, looks again only after a second:
            # an app that drains the queue faster than that sat idle for most of it.
            "fetch.queue.backoff.ms": 10,
        }
        self._max_records = max_records
        self._client: Consumer | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rdkafka-fetch")
        self._assigned: frozenset[TP] = frozenset()
        self._paused: set[TP] = set()
        self._errors_logged: dict[int, float] = {}
        # Connect now, on its thread, not at the first placement: a worker's first
        # batches then wait for a fetch, not for a connection and a metadata request.
        self._thread.submit(self._connect)

    @classmethod
    def for_app(cls, app: AppT, new_consumer: NewConsumer, *, transactions: bool) -> RdkafkaFetcher:
        """A fetcher for ``app``'s consumer, with a client ``new_consumer`` makes, and the app's fetch settings."""
        conf = app.conf
        return cls(
            new_consumer,
            {
                "group.id": f"{conf.id}-fetch",  # required by the client; never joined, never committed
                "client.id": f"{conf.broker_client_id}-fetch",
                "auto.offset.reset": conf.consumer_auto_offset_reset,
                "isolation.level": "read_committed" if transactions else "read_uncommitted",
            },
            max_records=conf.broker_max_poll_records or 10_000,
        )

    @property
    def assigned(self) -> frozenset[TP]:
        """The partitions it fetches (those :meth:`place` put and :meth:`drop` did not take away)."""
        return self._assigned

    async def _call(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def _connect(self) -> None:
        try:
            self._ensure_client().list_topics(timeout=_CONNECT_WAIT_S)
        except KafkaException as exc:  # the broker is away: librdkafka keeps trying by itself
            logger.debug("librdkafka fetcher: no metadata yet (%s)", exc)

    def _ensure_client(self) -> Consumer:
        if self._client is None:
            self._client = self._new_consumer(self._config)
        return self._client

    async def place(self, positions: Mapping[TP, int | None]) -> None:
        """Fetch these partitions from these offsets on (None: the reset policy's end); drops what was fetched."""
        if positions:
            await self._call(self._place, dict(positions))

    def _place(self, positions: dict[TP, int | None]) -> None:
        client = self._ensure_client()
        # Unassign and assign again, not seek: librdkafka purges the partition's queue
        # either way, and a seek right after an assign fails while the fetch starts.
        known = [tp for tp in positions if tp in self._assigned]
        if known:
            client.incremental_unassign([TopicPartition(tp.topic, tp.partition) for tp in known])
        reset = OFFSET_BEGINNING if self._config.get("auto.offset.reset", "earliest") == "earliest" else OFFSET_END
        client.incremental_assign(
            [
                TopicPartition(tp.topic, tp.partition, offset if offset is not None and offset >= 0 else reset)
                for tp, offset in positions.items()
            ]
        )
        # librdkafka keeps a partition's pause across unassign and assign: a partition
        # paused during a rebalance would come back paused, and never be fetched again.
        client.resume([TopicPartition(tp.topic, tp.partition) for tp in positions])
        self._paused.difference_update(positions)
        self._assigned = self._assigned | frozenset(positions)
        logger.debug("librdkafka fetches %s", positions)

    async def drop(self, partitions: Iterable[TP]) -> None:
        """Stop fetching these partitions (the ones it fetches, others are ignored)."""
        mine = self._assigned.intersection(partitions)
        if mine:
            await self._call(self._drop, mine)

    def _drop(self, partitions: frozenset[TP]) -> None:
        self._ensure_client().incremental_unassign([TopicPartition(tp.topic, tp.partition) for tp in partitions])
        self._assigned = self._assigned - partitions
        self._paused.difference_update(partitions)

    async def fetch(self, paused: Iterable[TP], timeout: float) -> dict[TP, Columns]:
        """Fetched records per partition, waiting up to ``timeout`` s for some; none of ``paused``."""
        if not self._assigned:  # nothing placed yet (a rebalance under way): wait as a fetch would
            await asyncio.sleep(timeout)
            return {}
        result: dict[TP, Columns] = await self._call(self._fetch, self._assigned.intersection(paused), timeout)
        return result

    def _fetch(self, paused: frozenset[TP], timeout: float) -> dict[TP, Columns]:
        client = self._ensure_client()
        if paused != self._paused:
            # Faust pauses partitions during a rebalance's recovery: mirror it, so that
            # librdkafka does not read ahead what Faust will not take.
            pause, resume = paused - self._paused, self._paused - paused
            if pause:
                client.pause([TopicPartition(tp.topic, tp.partition) for tp in pause])
            if resume:
                client.resume([TopicPartition(tp.topic, tp.partition) for tp in resume])
            self._paused = set(paused)
        if len(self._paused) == len(self._assigned):
            time.sleep(timeout)  # on this thread: nothing to fetch, as consume() would wait
            return {}
        return by_partition(client.consume(self._max_records, timeout), self._log_error)

    def _log_error(self, message: Message) -> None:
        # librdkafka reports broker and partition trouble as messages with an error; it
        # retries by itself (a broker restart, a leader moving), so they are logged, at
        # most once per error code every 30 s, and the records around them kept.
        error: KafkaError | None = message.error()
        if error is None:
            return
        code, now = error.code(), time.monotonic()
        if now - self._errors_logged.get(code, -_ERROR_LOG_EVERY_S) >= _ERROR_LOG_EVERY_S:
            self._errors_logged[code] = now
            log = logger.warning if error.fatal() or not error.retriable() else logger.info
            log("librdkafka fetch: %s (%s [%s])", error.str(), message.topic(), message.partition())

    def highwater(self, tp: TP) -> int | None:
        """The partition's end offset as of the last fetch (None: not known yet)."""
        client = self._client
        if client is None:
            return None
        _low, high = client.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), cached=True)
        return int(high) if high >= 0 else None

    async def close(self) -> None:
        """Close the client (no commit, no group to leave) and its thread."""
        try:
            if self._client is not None:
                await self._call(self._close)
        finally:
            self._thread.shutdown(wait=False)

    def _close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            self._assigned = frozenset()
            client.close()


def by_partition(messages: list[Message], on_error: Callable[[Message], None]) -> dict[TP, Columns]:
    """librdkafka's consumed messages as columns per partition, in order; error events go to ``on_error``."""
    if any(map(_ERROR, messages)):
        for message in messages:
            if message.error() is not None:
                on_error(message)
        messages = [message for message in messages if message.error() is None]
    if not messages:
        return {}
    # librdkafka hands over runs of one partition's records (a fetch response's share),
    # interleaved: cut where (topic, partition) changes, then join each partition's runs.
    keys: list[tuple[Any, Any]] = list(zip(map(_TOPIC, messages), map(_PARTITION, messages), strict=True))
    cuts = [0, *compress(range(1, len(keys)), map(ne, keys[1:], keys)), len(keys)]
    runs: dict[tuple[str, int], list[Message]] = {}
    for start, end in pairwise(cuts):
        run = messages[start:end]
        found = runs.get(keys[start])
        if found is None:
            runs[keys[start]] = run
        else:
            found.extend(run)
    fetched: dict[TP, Columns] = {}
    for (topic, partition), run in runs.items():
        kind, timestamp_ms = run[-1].timestamp()
        offsets: list[Any] = list(map(_OFFSET, run))  # set on every message without an error
        fetched[TP(topic, partition)] = Columns(
            offsets,
            list(map(_KEY, run)),
            list(map(_VALUE, run)),
            timestamp_ms if timestamp_ms >= 0 else int(time.time() * 1000),
            # librdkafka: 1 create time, 2 log append time (0 none); Kafka's: 0 and 1.
            max(kind - 1, 0),
        )
    return fetched
