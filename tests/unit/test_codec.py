"""Decoding of input message values: formats, rejection reasons, and the fast joined path."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.codec import (
    FLOAT64_MAGIC,
    BadElement,
    CodecOptions,
    DecodedBatch,
    Reason,
    Rejection,
    decode_batch,
    decode_value,
    encode_float64_block,
)

FAST = settings(max_examples=150, deadline=None, database=None)
FINITE = st.floats(allow_nan=False, allow_infinity=False)


def same_floats(actual: np.ndarray, expected: list[float] | np.ndarray) -> bool:
    """Bit-exact equality, so that -0.0 and 0.0 differ and NaN cannot sneak through."""
    expected_array = np.asarray(expected, dtype=np.float64)
    return actual.dtype == np.float64 and actual.tobytes() == expected_array.tobytes()


def decode_each(values: Sequence[bytes | None], options: CodecOptions = CodecOptions()) -> DecodedBatch:
    """The reference: every value decoded on its own, then concatenated."""
    arrays, rejections = [], []
    for index, value in enumerate(values):
        array, rejection = decode_value(value, options, index)
        arrays.append(array)
        if rejection is not None:
            rejections.append(rejection)
    merged = np.concatenate(arrays) if arrays else np.empty(0)
    return DecodedBatch(merged, tuple(rejections))


# --- accepted formats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"3.25", [3.25]),
        (b"-17", [-17.0]),
        (b"1E5", [1e5]),
        (b" 7 ", [7.0]),
        (b"0", [0.0]),
        (b"-0.0", [-0.0]),
        (b"1e-400", [0.0]),  # underflow is a finite zero, not an error
        (b"18446744073709551616", [2.0**64]),
        (b"[1, 2.5, -3e4]", [1.0, 2.5, -3e4]),
        (b"  [ 4 ,5 ]\n", [4.0, 5.0]),
    ],
)
def test_json_numbers_and_arrays_are_accepted(value: bytes, expected: list[float]) -> None:
    array, rejection = decode_value(value)
    assert rejection is None
    assert same_floats(array, expected)


def test_float64_block_decodes_little_endian_doubles() -> None:
    numbers = [1.5, -2.25, 1e300, 5e-324]
    block = encode_float64_block(numbers)
    assert block[:4] == FLOAT64_MAGIC
    assert len(block) == 4 + 8 * len(numbers)
    array, rejection = decode_value(block)
    assert rejection is None
    assert same_floats(array, numbers)


# --- whole-message rejections -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Reason.EMPTY),
        (b"", Reason.EMPTY),
        (b"[]", Reason.EMPTY),
        (b"[ ]", Reason.EMPTY),
        (b"{not json", Reason.MALFORMED_JSON),
        (b"[1,2,]", Reason.MALFORMED_JSON),
        (b"[1, 2", Reason.MALFORMED_JSON),
        (b"1.0.0", Reason.MALFORMED_JSON),
        (b"1,2", Reason.MALFORMED_JSON),
        (b"word", Reason.MALFORMED_JSON),
        (b"\xff\xfe", Reason.MALFORMED_JSON),
        (b"NaN", Reason.MALFORMED_JSON),
        (b"[1, NaN]", Reason.MALFORMED_JSON),
        (b"Infinity", Reason.MALFORMED_JSON),
        (b'{"x": 1}', Reason.NOT_A_NUMBER),
        (b'"5"', Reason.NOT_A_NUMBER),
        (b"true", Reason.NOT_A_NUMBER),
        (b"false", Reason.NOT_A_NUMBER),
        (b"null", Reason.NOT_A_NUMBER),
        (b"[[1]]", Reason.NESTED_ARRAY),
        (b"1e400", Reason.NON_FINITE),
        (b"-1e400", Reason.NON_FINITE),
        (b"[1e400]", Reason.NON_FINITE),
        (FLOAT64_MAGIC, Reason.BAD_FLOAT64_BLOCK),
        (FLOAT64_MAGIC + b"\x00" * 7, Reason.BAD_FLOAT64_BLOCK),
        (encode_float64_block([1.0, 2.0])[:-1], Reason.BAD_FLOAT64_BLOCK),
        (encode_float64_block([math.nan]), Reason.NON_FINITE),
        (encode_float64_block([math.inf]), Reason.NON_FINITE),
    ],
)
def test_bad_message_is_rejected_whole_with_its_reason(value: bytes | None, reason: Reason) -> None:
    array, rejection = decode_value(value, index=7)
    assert array.size == 0
    assert rejection is not None
    assert (rejection.index, rejection.reason, rejection.accepted) == (7, reason, 0)
    assert rejection.detail
    assert rejection.bad_elements == ()
    assert rejection.rejected_count == 1


@pytest.mark.parametrize("template", [b"%s", b"-%s", b"[%s]", b'[1, "a", %s]'])
def test_integer_too_large_for_a_double_is_rejected_not_raised(template: bytes) -> None:
    # 10**309 overflows a double: it must be rejected like 1e400, not crash the worker.
    value = template % (b"1" + b"0" * 309)
    decoded = decode_batch([b"1", value, b"2"])
    assert same_floats(decoded.values, [1.0, 1.0, 2.0] if template.startswith(b"[1") else [1.0, 2.0])
    assert [r.index for r in decoded.rejections] == [1]


def test_too_large_is_checked_before_parsing() -> None:
    options = CodecOptions(max_value_bytes=16)
    big = encode_float64_block([1.0, 2.0])  # 20 bytes
    array, rejection = decode_value(big, options)
    assert array.size == 0
    assert rejection is not None
    assert rejection.reason is Reason.TOO_LARGE
    assert "20 bytes" in rejection.detail
    array, rejection = decode_value(b"[" + b"1," * 7 + b"1]", options)  # 17 bytes of valid JSON
    assert rejection is not None
    assert rejection.reason is Reason.TOO_LARGE
    assert decode_value(b"[1,2,3,4,5,6,7]", options)[1] is None  # 15 bytes: fine


def test_too_large_applies_to_short_scalars_in_a_batch_too() -> None:
    # decode_batch must honour max_value_bytes exactly like decode_value does.
    options = CodecOptions(max_value_bytes=4)
    decoded = decode_batch([b"1", b"123456"], options)
    assert same_floats(decoded.values, [1.0])
    assert [(r.index, r.reason) for r in decoded.rejections] == [(1, Reason.TOO_LARGE)]


# --- infinity and partial batches -------------------------------------------------------------


def test_accept_infinity_keeps_inf_but_never_nan_in_float64_blocks() -> None:
    block = encode_float64_block([1.0, math.inf, math.nan, -math.inf])
    array, rejection = decode_value(block, CodecOptions(accept_infinity=True))
    assert same_floats(array, [1.0, math.inf, -math.inf])
    assert rejection is not None
    assert rejection.reason is Reason.PARTIAL_BATCH
    assert rejection.bad_elements == (BadElement(2, Reason.NON_FINITE),)
    assert rejection.accepted == 3


def test_without_accept_infinity_inf_elements_are_dropped_from_float64_blocks() -> None:
    block = encode_float64_block([math.inf, 1.0, math.nan, 2.0, -math.inf])
    array, rejection = decode_value(block)
    assert same_floats(array, [1.0, 2.0])
    assert rejection is not None
    assert rejection.reason is Reason.PARTIAL_BATCH
    assert [b.index for b in rejection.bad_elements] == [0, 2, 4]
    assert {b.reason for b in rejection.bad_elements} == {Reason.NON_FINITE}
    assert (rejection.accepted, rejection.rejected_count) == (2, 3)


@pytest.mark.parametrize("accept_infinity", [False, True])
def test_a_batch_of_float64_blocks_treats_infinity_and_nan_as_each_block_alone(accept_infinity: bool) -> None:
    # A batch of blocks is decoded as one buffer: the options must still decide per number.
    options = CodecOptions(accept_infinity=accept_infinity)
    for bad in ([math.inf], [-math.inf], [math.nan], [math.inf, math.nan]):
        values = [encode_float64_block([1.0, 2.0]), encode_float64_block([3.0, *bad, 4.0]), encode_float64_block([5.0])]
        batch = decode_batch(values, options)
        reference = decode_each(values, options)
        assert same_floats(batch.values, reference.values)
        assert batch.rejections == reference.rejections
        kept_inf = accept_infinity and not any(math.isnan(x) for x in bad)
        assert (batch.rejections == ()) is kept_inf
        assert batch.values.flags.writeable


def test_json_array_with_bad_elements_keeps_its_numbers() -> None:
    value = b'[1, "a", 1e400, [2], null, true, 2.5, false, {"k": 1}]'
    array, rejection = decode_value(value, index=3)
    assert same_floats(array, [1.0, 2.5])
    assert rejection is not None
    assert (rejection.index, rejection.reason, rejection.accepted) == (3, Reason.PARTIAL_BATCH, 2)
    assert rejection.bad_elements == (
        BadElement(1, Reason.NOT_A_NUMBER),
        BadElement(2, Reason.NON_FINITE),
        BadElement(3, Reason.NESTED_ARRAY),
        BadElement(4, Reason.NOT_A_NUMBER),
        BadElement(5, Reason.NOT_A_NUMBER),
        BadElement(7, Reason.NOT_A_NUMBER),
        BadElement(8, Reason.NOT_A_NUMBER),
    )
    assert rejection.rejected_count == 7


def test_array_with_only_bad_elements_of_one_kind_takes_that_reason() -> None:
    array, rejection = decode_value(b"[true, false, null]")
    assert array.size == 0
    assert rejection is not None
    assert rejection.reason is Reason.NOT_A_NUMBER
    assert [b.index for b in rejection.bad_elements] == [0, 1, 2]


# --- batches ----------------------------------------------------------------------------------


def test_decode_batch_keeps_message_order_and_points_rejections_at_messages() -> None:
    values: list[bytes | None] = [
        b"1",
        b"[2, 3]",
        b"oops",
        encode_float64_block([4.0, math.nan, 5.0]),
        None,
        b"6",
        b'[7, "x"]',
        b"8",
    ]
    decoded = decode_batch(values)
    assert same_floats(decoded.values, [1, 2, 3, 4, 5, 6, 7, 8])
    assert [(r.index, r.reason) for r in decoded.rejections] == [
        (2, Reason.MALFORMED_JSON),
        (3, Reason.PARTIAL_BATCH),
        (4, Reason.EMPTY),
        (6, Reason.PARTIAL_BATCH),
    ]
    assert decoded.rejections[1].bad_elements == (BadElement(1, Reason.NON_FINITE),)
    assert decoded.rejections[3].bad_elements == (BadElement(1, Reason.NOT_A_NUMBER),)


def test_decode_batch_of_nothing_is_empty() -> None:
    decoded = decode_batch([])
    assert decoded.values.size == 0
    assert decoded.rejections == ()


@pytest.mark.parametrize(
    "values",
    [
        [b"1", b"2", b"3"],
        [b"1,2", b"3"],
        [b"3", b"1,2"],
        [b"1,2"],
        [b" 7 ", b"-0", b"1E5", b"-0.0", b"\t2\n"],
        [b"1", b"1e400", b"2"],
        [b"1", b" ", b"2"],
        [b"1", b",", b"2"],
        [b"1 2", b"3"],
        [b"+1", b"2"],
        [b"1", b"NaN", b"[3]", b"4", b"true"],
        [b"1" + b"0" * 63, b"5"],
        [b"1" + b"0" * 64, b"5"],
        [b" [1]", b"2"],
        [b"1]", b"[2"],
        [b"", b"1", None, b"2"],
        # The batch path is chosen from the first byte and the longest value: blocks and
        # arrays first or later, short or long, and long scalars, all decode as alone.
        [encode_float64_block([1.0, 2.0]), b"3", b"4"],
        [b"1", b"2", encode_float64_block(np.arange(20.0))],
        [b"1", encode_float64_block([2.0]), b"3"],
        [b"[1, 2]", b"3"],
        [b"1", b"[2, 3]"],
        [b"1", b" " * 70 + b"2", b"3"],
        [b"1", None],
        [b"D", b"1"],
        # Batches of arrays are joined into one: an empty or ragged one must not hide.
        [b"[1, 2]", b"[3]", b"[4.5, -6e2]"],
        [b"[]"],
        [b"[ ]"],
        [b"[1]", b"[]", b"[2]"],
        [b"[1]", b"[]"],
        [b"[]", b"[1]"],
        [b"[1,]", b"[2]"],
        [b"[1]", b"[,2]"],
        [b"[1]", b"[2 3]"],
        [b"[1]", b"[1e400]", b"[2]"],
        [b"[1]", b"[[2]]"],
        [b"[1]", b'["2"]'],
        [b"[1] ", b"[2]"],
        [b"[1]", b"2"],
        [b"[1]", encode_float64_block([2.0])],
        [b"[1", b"2]"],
        [b"[0]", b"[1 2", b"[3]"],
        [b"[0]", b"1 2]", b"[3]"],
    ],
)
def test_joined_scalar_path_matches_decoding_each_value_alone(values: list[bytes | None]) -> None:
    batch = decode_batch(values)
    reference = decode_each(values)
    assert same_floats(batch.values, reference.values)
    assert batch.rejections == reference.rejections


# --- properties -------------------------------------------------------------------------------

SCALAR_TEXT = st.text(alphabet="0123456789+-.eE, \t", min_size=1, max_size=8).map(str.encode)
MESSAGE = st.one_of(
    st.none(),
    st.binary(max_size=40),
    SCALAR_TEXT,
    FINITE.map(orjson.dumps),
    st.integers(-(10**40), 10**40).map(lambda i: str(i).encode()),
    st.lists(st.one_of(FINITE, st.booleans(), st.none(), st.text(max_size=3)), max_size=5).map(orjson.dumps),
    st.binary(max_size=33).map(lambda b: FLOAT64_MAGIC + b),
    st.sampled_from([b"NaN", b"1e400", b"[1e400, 1]", b"[[1], 2]", b"{}", b"true", b'"5"']),
)


@FAST
@given(st.lists(MESSAGE, max_size=12))
def test_no_message_vanishes_and_nothing_raises(values: list[bytes | None]) -> None:
    decoded = decode_batch(values)
    indices = [r.index for r in decoded.rejections]
    assert indices == sorted(set(indices))
    assert all(0 <= i < len(values) for i in indices)
    rejected = {r.index: r for r in decoded.rejections}
    accounted = 0
    for index, value in enumerate(values):
        array, alone = decode_value(value, CodecOptions(), index)
        if index in rejected:
            assert alone == rejected[index]
            assert rejected[index].accepted == array.size
        else:
            # Not rejected: fully accepted, contributing at least one number.
            assert alone is None
            assert array.size >= 1
        accounted += array.size
    assert decoded.values.size == accounted
    assert np.isfinite(decoded.values).all()


@FAST
@given(st.lists(FINITE, min_size=1, max_size=40))
def test_finite_floats_round_trip_exactly_through_every_format(numbers: list[float]) -> None:
    singles = decode_batch([orjson.dumps(x) for x in numbers])
    array = decode_batch([orjson.dumps(numbers)])
    block = decode_batch([encode_float64_block(numbers)])
    for decoded in (singles, array, block):
        assert decoded.rejections == ()
        assert same_floats(decoded.values, numbers)


ARRAY_TEXT = st.text(alphabet="0123456789+-.eE, \t[]", max_size=10).map(lambda t: f"[{t}]".encode())


@FAST
@given(st.lists(st.one_of(ARRAY_TEXT, FINITE.map(lambda x: orjson.dumps([x, -x]))), min_size=1, max_size=8))
def test_a_batch_of_arrays_decodes_as_each_array_alone(values: list[bytes | None]) -> None:
    batch = decode_batch(values)
    reference = decode_each(values)
    assert same_floats(batch.values, reference.values)
    assert batch.rejections == reference.rejections


@pytest.mark.parametrize("bad", [None, b"[]", b"[1e400]", b"[1, null]"])
def test_a_batch_of_arrays_larger_than_one_joined_parse_decodes_as_each_alone(bad: bytes | None) -> None:
    # Megabytes of arrays are parsed a part at a time: no message may be lost or doubled at a seam.
    rng = np.random.default_rng(3)
    values: list[bytes | None] = [orjson.dumps(rng.normal(0, 1e6, 1000).tolist()) for _ in range(150)]
    if bad is not None:
        values[-3] = bad
    batch = decode_batch(values)
    reference = decode_each(values)
    assert same_floats(batch.values, reference.values)
    assert batch.rejections == reference.rejections
    assert batch.values.size == 150_000 - (bad is not None) * (1000 - int(bad == b"[1, null]"))


@pytest.mark.parametrize(
    "odd",
    [b"123456789012345678901234567890", b"18446744073709551615", b"-9223372036854775809", b"9007199254740993",
     b"-0", b"-0.0", b"1E5", b"5e-324", b"1.7976931348623157e308"],
)  # fmt: skip
@pytest.mark.parametrize("as_array", [False, True])
def test_numbers_at_a_parser_s_edges_decode_in_a_batch_as_each_alone(odd: bytes, as_array: bool) -> None:
    # The joined parse (simdjson) refuses an integer beyond 64 bits, which the careful path
    # (orjson) takes as a float: the batch falls back and must still give the same numbers.
    values: list[bytes | None] = [b"[1, %s, 2]" % odd, b"[3]"] if as_array else [b"1", odd, b"2"]
    batch = decode_batch(values)
    reference = decode_each(values)
    assert same_floats(batch.values, reference.values)
    assert np.array_equal(np.signbit(batch.values), np.signbit(reference.values))
    assert batch.rejections == reference.rejections == ()


@pytest.mark.parametrize(
    "odd",
    [b'[1, "2"]', b"[1, true]", b"[null]", b'[1, {"a": 2}]', b"[1, {}]", b"[1, [2]]", b"[[1, 2]]", b"[1], [2]",
     b"[1]]", b"[NaN]", b"[Infinity]", b"[1, 2,]", b"[]", b"[1 2]", b"[0x10]", b"[1] x"],
)  # fmt: skip
def test_an_array_the_joined_parse_must_not_take_decodes_in_a_batch_as_alone(odd: bytes) -> None:
    # The joined parse scans for nothing but an inner "[": everything else that is not a flat
    # array of numbers must make simdjson refuse the batch, which then goes value by value.
    values: list[bytes | None] = [b"[1.5, 2.5]", odd, b"[3]"]
    batch = decode_batch(values)
    reference = decode_each(values)
    assert same_floats(batch.values, reference.values)
    assert batch.rejections == reference.rejections
    assert [r.index for r in batch.rejections] == [1]


@FAST
@given(st.lists(MESSAGE, max_size=12))
def test_decode_batch_equals_decoding_each_value(values: list[bytes | None]) -> None:
    batch = decode_batch(values)
    reference = decode_each(values)
    assert same_floats(batch.values, reference.values)
    assert batch.rejections == reference.rejections
    assert all(isinstance(r, Rejection) for r in batch.rejections)
