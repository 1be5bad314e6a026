"""Raw fetched records for batch-delivered partitions: no ``ConsumerRecord`` per record.

aiokafka wraps every fetched record in a ``ConsumerRecord`` (eleven fields, two
``len`` calls) through a generator. Measured here on single-number messages that
costs about 2.9 us a record against 0.5 us for iterating the record batches
themselves, and it was the largest cost of a batch-delivered worker. Our batch
consumer needs only each record's offset, key, value and timestamp, which the
decoded record objects of aiokafka's C extension already carry.

:class:`LightPartitionRecords` replaces aiokafka's ``PartitionRecords`` (the
fetcher looks the class up by its module-level name when a fetch response
arrives). It hands out the raw record only for partitions whose consumer was
created with a :class:`RawRecordsFor` value deserializer that claims the
partition's topic; for every other consumer and topic it behaves exactly like
aiokafka's class. Raw records have no ``topic``/``partition`` attributes: the
batch consumer takes those from the partition it fetched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import aiokafka.errors as Errors  # noqa: N812  # aiokafka's own spelling
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types.tuples import TP

from pipeline.transport.committed import commit_assigned, seek_all_to_committed

__all__ = ["LightConsumerThread", "LightPartitionRecords", "RawRecordsFor", "install_light_records"]

logger = logging.getLogger(__name__)

_AiokafkaPartitionRecords: type[Any] = aiokafka_fetcher.PartitionRecords


class RawRecordsFor:
    """A value deserializer that marks a consumer's batch topics for raw records.

    As a deserializer it is the identity, so that a consumer using it behaves as
    one without a deserializer wherever the light records are not installed.
    """

    def __init__(self, wants_raw: Callable[[str], bool]) -> None:
        self._wants_raw = wants_raw

    def __call__(self, value: bytes | None) -> bytes | None:
        return value

    def wants_raw(self, topic: str) -> bool:
        """Whether records of ``topic`` should be handed out raw."""
        return self._wants_raw(topic)


class LightPartitionRecords(_AiokafkaPartitionRecords):  # type: ignore[misc]  # aiokafka ships no types
    """aiokafka's ``PartitionRecords`` that hands out raw records for claimed topics."""

    def __init__(self, tp: Any, records: Any, aborted: Any, fetch_offset: int, key_de: Any, value_de: Any,
                 check_crcs: bool, isolation_level: int) -> None:  # fmt: skip
        # Transactions (read_committed) need aiokafka's abort bookkeeping: keep its path.
        self._raw = (
            isinstance(value_de, RawRecordsFor)
            and value_de.wants_raw(tp.topic)
            and isolation_level == aiokafka_fetcher.READ_UNCOMMITTED
        )
        super().__init__(tp, records, aborted, fetch_offset, key_de, value_de, check_crcs, isolation_level)
        if self._raw:
            self._records_iterator = self._unpack_raw_records()

    def __iter__(self) -> Any:
        # The generator itself: no Python-level __next__ call per record.
        return self._records_iterator if self._raw else self

    next_fetch_offset: int
    """aiokafka's: the offset to fetch next, advanced per record handed out."""

    def _unpack_raw_records(self) -> Iterator[Any]:
        # aiokafka's _unpack_records for read_uncommitted, yielding the C records
        # (offset, timestamp, timestamp_type, key, value, headers) themselves.
        records = self._records
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                raise Errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
            if not batch.is_control_batch:
                for record in batch:
                    offset: int = record.offset
                    if offset >= self.next_fetch_offset:  # a fetch may start inside a batch
                        # Per record: a caller may stop after max_records and fetch on from here.
                        self.next_fetch_offset = offset + 1
                        yield record
            # As aiokafka: past the batch's last offset even if compaction removed it
            # (but never back, should a batch lie wholly before the fetch offset).
            self.next_fetch_offset = max(self.next_fetch_offset, batch.next_offset)


def install_light_records() -> None:
    """Make aiokafka's fetcher build :class:`LightPartitionRecords` (idempotent)."""
    if aiokafka_fetcher.PartitionRecords is not LightPartitionRecords:
        aiokafka_fetcher.PartitionRecords = LightPartitionRecords
        logger.debug("aiokafka fetcher: light records for batch topics")


class LightConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread whose consumer gets raw records for some topics.

    The owning consumer must have a ``wants_raw_records(topic) -> bool`` method, and a
    ``fetched_elsewhere(partitions) -> set`` one naming the partitions aiokafka must
    leave paused (another fetcher reads them).
    """

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        # In aiokafka's thread, before Faust hears of the assignment: aiokafka then
        # never fetches (nor buffers) what another fetcher reads. A new assignment
        # starts unpaused, so this runs on every rebalance.
        elsewhere = self.consumer.fetched_elsewhere(assigned)  # type: ignore[attr-defined]
        if elsewhere:
            self._ensure_consumer().pause(*(TopicPartition(tp.topic, tp.partition) for tp in elsewhere))
        await super().on_partitions_assigned(assigned, generation_id)

    def verify_event_path(self, now: float, tp: Any) -> None:
        # Faust's livelock check reads aiokafka's fetch state of the partition: its last
        # fetch, highwater and position. For a partition aiokafka keeps paused (another
        # fetcher reads it) that state is meaningless: no fetch is an ERROR every few
        # seconds, and an unset position fails an assertion that crashed both workers of
        # an 8,192-partition run. Such partitions are skipped whole.
        if self.consumer.fetched_elsewhere({tp}):  # type: ignore[attr-defined]
            return
        super().verify_event_path(now, tp)

    async def seek_to_committed(self) -> Mapping[TP, int | None]:  # type: ignore[override]
        # One OffsetFetch for every assigned partition, not one per partition. None for
        # "never committed", as aiokafka's own method returns (Faust's stub says int).
        committed = await self.call_thread(seek_all_to_committed, self._ensure_consumer())
        return {TP(tp.topic, tp.partition): offset for tp, offset in committed.items()}

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        # Faust's builds the assigned set once per offset: O(partitions²) per commit.
        return await commit_assigned(self, offsets)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        install_light_records()
        # Faust decodes values itself, so its consumer has no deserializer to replace;
        # the fetcher, created at start(), takes this one over.
        wants_raw: Callable[[str], bool] = self.consumer.wants_raw_records  # type: ignore[attr-defined]
        consumer._value_deserializer = RawRecordsFor(wants_raw)
        return consumer
