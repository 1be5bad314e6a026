"""Raw records for batch topics: the same records, offsets and positions as aiokafka's own path."""

from __future__ import annotations

import struct

import pytest
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from faust.types import tuples as faust_tuples

from pipeline.transport.light_records import LightConsumerThread, LightPartitionRecords, RawRecordsFor

TP = TopicPartition("numbers", 3)
READ_UNCOMMITTED, READ_COMMITTED = 0, 1


def _fetch_response(batches: list[tuple[int, int]]) -> bytes:
    """Record batches at (base offset, record count), values b"<offset>.5", lz4-compressed."""
    data = bytearray()
    for base, count in batches:
        builder = DefaultRecordBatchBuilder(2, 3, 0, -1, -1, -1, 10**7)
        for delta in range(count):
            builder.append(
                delta,
                timestamp=1_700_000_000_000 + delta,
                key=b"k%d" % delta,
                value=b"%d.5" % (base + delta),
                headers=[],
            )
        built = bytearray(builder.build())
        struct.pack_into(">q", built, 0, base)  # the base offset: the first field of a batch
        data += built
    return bytes(data)


def _raw(topic_wanted: bool = True) -> RawRecordsFor:
    return RawRecordsFor(lambda topic: topic_wanted and topic == TP.topic)


# Kafka answers a fetch from the batch holding the fetch offset on.
@pytest.mark.parametrize("fetch_offset", [0, 1, 250, 499])
def test_raw_records_match_aiokafka_records_from_any_fetch_offset(fetch_offset: int) -> None:
    data = _fetch_response([(0, 500), (500, 500), (1000, 1000)])
    ours = LightPartitionRecords(TP, MemoryRecords(data), [], fetch_offset, None, _raw(), False, READ_UNCOMMITTED)
    theirs = PartitionRecords(TP, MemoryRecords(data), [], fetch_offset, None, None, False, READ_UNCOMMITTED)
    got, expected = list(ours), list(theirs)
    assert [(r.offset, r.key, r.value, r.timestamp) for r in got] == [
        (r.offset, r.key, r.value, r.timestamp) for r in expected
    ]
    assert got[0].offset == fetch_offset
    assert ours.next_fetch_offset == theirs.next_fetch_offset == 2000
    assert not hasattr(got[0], "topic")  # raw: the C record itself


def test_a_batch_wholly_before_the_fetch_offset_never_moves_the_position_back() -> None:
    data = _fetch_response([(0, 500), (500, 500), (1000, 1000)])
    records = LightPartitionRecords(TP, MemoryRecords(data), [], 1234, None, _raw(), False, READ_UNCOMMITTED)
    assert [r.offset for r in records] == list(range(1234, 2000))


def test_a_caller_stopping_early_resumes_where_it_stopped() -> None:
    # aiokafka's FetchResult.getall stops after max_records and reads the position.
    records = LightPartitionRecords(
        TP, MemoryRecords(_fetch_response([(0, 100)])), [], 0, None, _raw(), False, READ_UNCOMMITTED
    )
    iterator = iter(records)
    first = [next(iterator) for _ in range(30)]
    assert records.next_fetch_offset == 30 == first[-1].offset + 1
    assert [r.offset for r in iterator] == list(range(30, 100))


@pytest.mark.parametrize(
    ("deserializer", "isolation"),
    [(None, READ_UNCOMMITTED), (_raw(topic_wanted=False), READ_UNCOMMITTED), (_raw(), READ_COMMITTED)],
)
def test_other_consumers_topics_and_transactions_get_aiokafka_records(deserializer: object, isolation: int) -> None:
    records = LightPartitionRecords(
        TP, MemoryRecords(_fetch_response([(0, 10)])), [], 0, None, deserializer, False, isolation
    )
    got = list(records)
    assert [r.topic for r in got] == [TP.topic] * 10
    assert [r.value for r in got] == [b"%d.5" % i for i in range(10)]


def test_the_livelock_check_skips_a_partition_another_fetcher_reads_without_touching_aiokafka() -> None:
    # Faust's check reads aiokafka's fetch state (an unset position asserts) and would
    # crash the worker for a partition aiokafka keeps paused: it must not look at all.
    tp = faust_tuples.TP("numbers", 3)

    class Elsewhere:
        def fetched_elsewhere(self, tps: set[faust_tuples.TP]) -> set[faust_tuples.TP]:
            return set(tps)

    class NoState:
        consumer = Elsewhere()

        def _ensure_consumer(self) -> None:
            raise AssertionError("aiokafka's fetch state was read")

    LightConsumerThread.verify_event_path(NoState(), 0.0, tp)  # type: ignore[arg-type]
