"""Fetched batches as columns: trimming, joining, and librdkafka's messages grouped per partition."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, KafkaError, Message
from faust.types.tuples import TP
from hypothesis import given
from hypothesis import strategies as st

from pipeline.transport.columns import Columns, columns_of
from pipeline.transport.rdkafka_fetch import by_partition


def _columns(offsets: list[int], timestamp_ms: int = 7) -> Columns:
    return Columns(offsets, [b"k%d" % o for o in offsets], [b"v%d" % o for o in offsets], timestamp_ms, 0)


@given(st.lists(st.integers(0, 10_000), unique=True).map(sorted), st.integers(-5, 10_005))
def test_from_offset_keeps_exactly_the_records_at_or_after_it(offsets: list[int], first: int) -> None:
    kept = _columns(offsets).from_offset(first)
    expected = [o for o in offsets if o >= first]
    if not expected:
        assert kept is None
        return
    assert kept is not None
    assert kept.offsets == expected
    assert kept.keys == [b"k%d" % o for o in expected]
    assert kept.values == [b"v%d" % o for o in expected]


def test_from_offset_returns_the_same_columns_when_nothing_is_before_it() -> None:
    columns = _columns([5, 6, 7])
    assert columns.from_offset(5) is columns
    assert columns.from_offset(0) is columns


def test_then_appends_the_later_records_and_takes_their_timestamp() -> None:
    joined = _columns([1, 2], timestamp_ms=10).then(_columns([3], timestamp_ms=20))
    assert joined.offsets == [1, 2, 3]
    assert joined.values == [b"v1", b"v2", b"v3"]
    assert joined.timestamp_ms == 20
    assert len(joined) == 3


def test_columns_of_aiokafka_records() -> None:
    records = [
        SimpleNamespace(offset=o, key=b"k", value=b"%d" % o, timestamp=100 + o, timestamp_type=1) for o in (4, 5)
    ]
    columns = columns_of(records)
    assert columns == Columns([4, 5], [b"k", b"k"], [b"4", b"5"], 105, 1)
    assert columns_of([]) is None


def _message(topic: str, partition: int, offset: int, kind: int = TIMESTAMP_CREATE_TIME) -> Message:
    value = b"%s-%d-%d" % (topic.encode(), partition, offset)
    timestamp = (kind, 1000 + offset)
    return Message(topic=topic, partition=partition, offset=offset, key=b"k", value=value, timestamp=timestamp)


def test_by_partition_joins_each_partitions_runs_in_order_and_keeps_topics_apart() -> None:
    # librdkafka hands over runs per partition, interleaved; partition 0 of two topics must not merge.
    messages = [
        _message("numbers", 0, 10),
        _message("numbers", 0, 11),
        _message("sketches", 0, 3),
        _message("numbers", 1, 7),
        _message("numbers", 0, 12),
        _message("sketches", 0, 4, TIMESTAMP_LOG_APPEND_TIME),
    ]
    errors: list[KafkaError | None] = []
    grouped = by_partition(messages, lambda message: errors.append(message.error()))
    assert set(grouped) == {TP("numbers", 0), TP("numbers", 1), TP("sketches", 0)}
    numbers = grouped[TP("numbers", 0)]
    assert numbers.offsets == [10, 11, 12]
    assert numbers.values == [b"numbers-0-10", b"numbers-0-11", b"numbers-0-12"]
    assert numbers.keys == [b"k"] * 3
    assert (numbers.timestamp_ms, numbers.timestamp_type) == (1012, 0)  # create time is Kafka's 0
    sketches = grouped[TP("sketches", 0)]
    assert sketches.offsets == [3, 4]
    assert (sketches.timestamp_ms, sketches.timestamp_type) == (1004, 1)  # log append time is Kafka's 1
    assert grouped[TP("numbers", 1)].offsets == [7]
    assert errors == []


def test_by_partition_reports_error_events_and_keeps_the_records_around_them() -> None:
    error = Message(topic="numbers", partition=2, error=KafkaError(KafkaError._TRANSPORT))
    seen: list[Message] = []
    grouped = by_partition([_message("numbers", 2, 0), error, _message("numbers", 2, 1)], seen.append)
    assert seen == [error]
    assert grouped[TP("numbers", 2)].offsets == [0, 1]
    assert by_partition([error], seen.append) == {}
    assert by_partition([], seen.append) == {}


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1]])
def test_by_partition_of_one_run_per_partition(order: list[int]) -> None:
    messages = [_message("numbers", p, o) for p in order for o in range(3)]
    grouped = by_partition(messages, lambda _: None)
    assert {tp.partition: c.offsets for tp, c in grouped.items()} == {p: [0, 1, 2] for p in order}
