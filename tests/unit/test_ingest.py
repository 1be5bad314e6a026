"""Applying a partition's raw records to its shard state, idempotently."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from pipeline.core.codec import BadElement, CodecOptions, Reason, Rejection, encode_float64_block
from pipeline.core.ingest import RawRecord, RecordBatch, ingest_batch, ingest_records, rejection_counts
from pipeline.core.sketch import ShardState

OPTIONS = CodecOptions()


def numbers(first: int, last: int) -> list[RawRecord]:
    """Records at offsets first..last, the record at offset i carrying the number i."""
    return [RawRecord(offset, orjson.dumps(offset)) for offset in range(first, last + 1)]


def test_fresh_records_are_decoded_and_applied() -> None:
    state = ShardState.empty(0, 200)
    result = ingest_records(state, numbers(0, 9), OPTIONS)
    assert (result.accepted, result.skipped, result.rejections, result.advanced) == (10, 0, (), True)
    assert (state.n, state.last_offset) == (10, 9)


def test_redelivered_overlapping_range_is_not_counted_twice() -> None:
    state = ShardState.empty(0, 200)
    ingest_records(state, numbers(0, 9), OPTIONS)
    result = ingest_records(state, numbers(5, 14), OPTIONS)  # 5..9 were already applied
    assert (result.accepted, result.skipped, result.advanced) == (5, 5, True)
    assert (state.n, state.last_offset) == (15, 14)
    assert state.sketch.get_min_value() == 0.0
    assert state.sketch.get_max_value() == 14.0


def test_redelivered_range_already_applied_changes_nothing() -> None:
    state = ShardState.empty(0, 200)
    ingest_records(state, numbers(0, 9), OPTIONS)
    before = state.to_bytes()
    result = ingest_records(state, numbers(3, 9), OPTIONS)
    assert (result.accepted, result.skipped, result.rejections, result.advanced) == (0, 7, (), False)
    assert state.to_bytes() == before


def test_state_restored_from_bytes_skips_what_it_already_holds() -> None:
    state = ShardState.empty(2, 200)
    ingest_records(state, numbers(0, 99), OPTIONS)
    restored = ShardState.from_bytes(state.to_bytes())  # as after a crash and a restore
    result = ingest_records(restored, numbers(50, 149), OPTIONS)
    assert (result.accepted, result.skipped) == (50, 50)
    assert (restored.n, restored.last_offset) == (150, 149)


def test_nothing_at_all_is_a_no_op() -> None:
    state = ShardState.empty(0, 200)
    result = ingest_records(state, [], OPTIONS)
    assert (result.accepted, result.skipped, result.advanced) == (0, 0, False)
    assert state.last_offset == -1


def test_rejections_carry_their_raw_record() -> None:
    state = ShardState.empty(0, 200)
    records = [
        RawRecord(10, b"1", key=b"a"),
        RawRecord(11, b"not json", key=b"b"),
        RawRecord(12, b"2"),
        RawRecord(13, None),
        RawRecord(14, b'[3, "x", 4]'),
    ]
    result = ingest_records(state, records, OPTIONS)
    assert result.accepted == 4
    assert [(record, rejection.reason) for record, rejection in result.rejections] == [
        (records[1], Reason.MALFORMED_JSON),
        (records[3], Reason.EMPTY),
        (records[4], Reason.PARTIAL_BATCH),
    ]
    assert (state.n, state.last_offset) == (4, 14)


def test_rejection_indices_refer_to_fresh_records_after_skipping() -> None:
    state = ShardState.empty(0, 200)
    ingest_records(state, numbers(0, 4), OPTIONS)
    records = [*numbers(3, 4), RawRecord(5, b"7"), RawRecord(6, b"oops"), RawRecord(7, b"{}")]
    result = ingest_records(state, records, OPTIONS)
    assert result.skipped == 2
    assert [record.offset for record, _ in result.rejections] == [6, 7]


def test_a_batch_of_only_bad_records_still_advances_the_offset() -> None:
    # Otherwise a poison record would be decoded and dead-lettered again on every restart.
    state = ShardState.empty(0, 200)
    result = ingest_records(state, [RawRecord(0, b"x"), RawRecord(1, b"")], OPTIONS)
    assert (result.accepted, result.advanced) == (0, True)
    assert (state.n, state.last_offset) == (0, 1)
    assert state.rejected == {"malformed_json": 1, "empty": 1}
    again = ingest_records(state, [RawRecord(0, b"x"), RawRecord(1, b"")], OPTIONS)
    assert (again.rejections, again.advanced) == ((), False)
    assert state.rejected == {"malformed_json": 1, "empty": 1}


def test_batch_rejections_are_counted_per_element() -> None:
    state = ShardState.empty(0, 200)
    records = [
        RawRecord(0, b'[1, "a", true, [2], 3]'),
        RawRecord(1, encode_float64_block([np.nan, 1.0, np.inf])),
        RawRecord(2, b"garbage"),
        RawRecord(3, b"1e400"),
    ]
    result = ingest_records(state, records, OPTIONS)
    assert result.accepted == 3
    assert state.rejected == {"not_a_number": 2, "nested_array": 1, "non_finite": 3, "malformed_json": 1}


def test_accept_infinity_option_reaches_the_decoder() -> None:
    state = ShardState.empty(0, 200)
    block = encode_float64_block([1.0, np.inf])
    result = ingest_records(state, [RawRecord(0, block)], CodecOptions(accept_infinity=True))
    assert (result.accepted, result.rejections) == (2, ())
    assert state.sketch.get_max_value() == np.inf


@pytest.mark.parametrize(
    ("rejection", "counts"),
    [
        (Rejection(0, Reason.MALFORMED_JSON, "d"), {"malformed_json": 1}),
        (Rejection(0, Reason.EMPTY, "d"), {"empty": 1}),
        (
            Rejection(
                0,
                Reason.PARTIAL_BATCH,
                "d",
                (
                    BadElement(1, Reason.NON_FINITE),
                    BadElement(3, Reason.NOT_A_NUMBER),
                    BadElement(4, Reason.NON_FINITE),
                ),
                accepted=2,
            ),
            {"non_finite": 2, "not_a_number": 1},
        ),
        (Rejection(0, Reason.NOT_A_NUMBER, "d", (BadElement(0, Reason.NOT_A_NUMBER),) * 2), {"not_a_number": 2}),
    ],
)
def test_rejection_counts_are_per_element_for_batches_else_per_message(
    rejection: Rejection, counts: dict[str, int]
) -> None:
    assert rejection_counts(rejection) == counts
    assert sum(counts.values()) == rejection.rejected_count


def test_a_record_repeated_inside_one_batch_is_counted_once() -> None:
    state = ShardState.empty(0, 200)
    batch = RecordBatch([5, 6, 7, 6, 7, 8], [b"1", b"2", b"3", b"2", b"3", b"4"], [None] * 6)
    result = ingest_batch(state, batch, CodecOptions())
    assert (state.n, state.last_offset, result.accepted) == (4, 8, 4)


def test_an_out_of_order_older_record_is_dropped_not_counted() -> None:
    state = ShardState.empty(0, 200)
    batch = RecordBatch([3, 4, 2, 5], [b"1", b"2", b"9", b"3"], [None] * 4)
    ingest_batch(state, batch, CodecOptions())
    assert (state.n, state.last_offset) == (3, 5)
