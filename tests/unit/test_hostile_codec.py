"""Hostile input to the codec: whatever bytes arrive, decoding returns numbers or reasons, never raises.

tests/unit/test_codec.py pins each format and reason; this file throws what an
attacker or a broken producer would send (arbitrary bytes, extreme exponents,
huge and deeply nested arrays, numbers as strings, oversized values, NaN and
Infinity tokens, float64 blocks of the wrong length) and checks the invariants
the shard relies on: no exception, only finite numbers (unless infinity is
accepted, never NaN), and every element either accepted or counted as rejected.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.core.codec import (
    FLOAT64_MAGIC,
    CodecOptions,
    Reason,
    Rejection,
    decode_batch,
    decode_value,
    encode_float64_block,
)

FAST = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
STRICT = CodecOptions()
LENIENT = CodecOptions(accept_infinity=True)
BOTH = pytest.mark.parametrize("options", [STRICT, LENIENT], ids=["strict", "accept_infinity"])


def check_outcome(
    value: bytes | None, array: np.ndarray, rejection: Rejection | None, options: CodecOptions, index: int = 0
) -> None:
    """The invariants of one decoded value, whatever it was."""
    assert array.dtype == np.float64
    assert array.ndim == 1
    assert not np.isnan(array).any(), "NaN has no rank: it must never be accepted"
    if not options.accept_infinity:
        assert np.isfinite(array).all()
    if rejection is None:
        assert array.size >= 1, f"{value!r} vanished: no numbers and no rejection"
        return
    assert isinstance(rejection.reason, Reason)
    assert rejection.index == index
    assert rejection.detail
    assert rejection.accepted == array.size
    if rejection.bad_elements:
        assert rejection.reason is Reason.PARTIAL_BATCH or len({b.reason for b in rejection.bad_elements}) == 1
        positions = [b.index for b in rejection.bad_elements]
        assert positions == sorted(set(positions))
        assert all(b.reason is not Reason.PARTIAL_BATCH for b in rejection.bad_elements)
    else:
        assert array.size == 0, "a whole-message rejection keeps no numbers"


# --- arbitrary bytes --------------------------------------------------------------------------

JSONISH = st.text(alphabet='0123456789+-.eE,[]{}:" \t\nntrufalsNIy', max_size=60).map(str.encode)
ANY_VALUE = st.one_of(
    st.none(),
    st.binary(max_size=200),
    JSONISH,
    st.binary(max_size=80).map(lambda b: FLOAT64_MAGIC + b),
    st.binary(max_size=80).map(lambda b: b"[" + b + b"]"),
)


@BOTH
@FAST
@given(value=ANY_VALUE)
@example(value=b"\xef\xbb\xbf1")  # a UTF-8 byte-order mark
@example(value=b"\x00\x001\x00")  # UTF-16-looking bytes (the stdlib fallback detects encodings)
@example(value=b"[1e400, \xff]")  # the overflow fallback meeting bytes that are not UTF-8
@example(value=b'["\\ud800", 1e400]')  # a lone surrogate next to an overflow
def test_arbitrary_bytes_never_raise_and_satisfy_the_invariants(value: bytes | None, options: CodecOptions) -> None:
    array, rejection = decode_value(value, options, 5)
    check_outcome(value, array, rejection, options, 5)


@BOTH
@FAST
@given(values=st.lists(ANY_VALUE, max_size=10))
def test_arbitrary_batches_never_raise_and_account_for_every_message(
    values: list[bytes | None], options: CodecOptions
) -> None:
    decoded = decode_batch(values, options)
    by_index = {r.index: r for r in decoded.rejections}
    assert len(by_index) == len(decoded.rejections), "one rejection per message at most"
    total = 0
    for index, value in enumerate(values):
        array, alone = decode_value(value, options, index)
        check_outcome(value, array, alone, options, index)
        assert by_index.get(index) == alone
        total += array.size
    assert decoded.values.size == total


# --- extreme exponents ------------------------------------------------------------------------

MANTISSA = st.from_regex(r"-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,20})?", fullmatch=True)


@FAST
@given(mantissa=MANTISSA, exponent=st.integers(-420, 420))
@example(mantissa="1", exponent=308)
@example(mantissa="1.7976931348623157", exponent=308)  # the largest double
@example(mantissa="1.7976931348623159", exponent=308)  # rounds past it: overflow
@example(mantissa="1", exponent=-320)  # subnormal
@example(mantissa="4.9", exponent=-324)  # the smallest subnormal
@example(mantissa="2", exponent=-324)  # below half of it: rounds to zero
@example(mantissa="1", exponent=400)
@example(mantissa="-1", exponent=400)
def test_json_numbers_with_any_exponent_decode_to_the_correctly_rounded_double_or_are_rejected(
    mantissa: str, exponent: int
) -> None:
    text = f"{mantissa}e{exponent}"
    expected = float(text)  # Python's float() rounds correctly: the reference
    for value, options in ((text.encode(), STRICT), (f"[{text}]".encode(), STRICT), (text.encode(), LENIENT)):
        array, rejection = decode_value(value, options)
        if math.isfinite(expected) or options.accept_infinity:
            assert rejection is None, f"{value!r}: {rejection}"
            assert array.tobytes() == np.array([expected]).tobytes(), f"{value!r} -> {array}, expected {expected!r}"
        else:
            # Overflow is rejected as non_finite, never accepted as inf.
            assert array.size == 0
            assert rejection is not None
            assert rejection.reason is Reason.NON_FINITE, f"{value!r}: {rejection}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"1e308", 1e308),
        (b"-1e308", -1e308),
        (b"1e-320", 1e-320),
        (b"5e-324", 5e-324),
        (b"1e-400", 0.0),
        (b"0e999999999999", 0.0),
        (b"1e-99999999999999999999", 0.0),
        (b"179769313486231570" + b"0" * 291, 1.7976931348623157e308),  # the largest double, as an integer
    ],
)
def test_extreme_but_representable_numbers_are_accepted_exactly(value: bytes, expected: float) -> None:
    for options in (STRICT, LENIENT):
        for message in (value, b"[" + value + b", 1]"):
            array, rejection = decode_value(message, options)
            assert rejection is None
            assert array[0] == expected
            assert math.copysign(1.0, array[0]) == math.copysign(1.0, expected)


@pytest.mark.parametrize("value", [b"1e400", b"-1e400", b"1E+400", b"1e" + b"9" * 1000, b"1" * 400, b"-" + b"9" * 400])
def test_overflow_is_non_finite_when_strict_and_infinity_when_accepted(value: bytes) -> None:
    array, rejection = decode_value(value, STRICT)
    assert array.size == 0
    assert rejection is not None
    assert rejection.reason is Reason.NON_FINITE
    array, rejection = decode_value(value, LENIENT)
    assert rejection is None
    assert array.tolist() == [math.copysign(math.inf, -1.0 if value.startswith(b"-") else 1.0)]
    # In a batch, the overflowing element goes and its neighbours stay.
    decoded = decode_batch([b"1", b"[2, " + value + b", 3]", b"4"], STRICT)
    assert decoded.values.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert [(r.index, r.reason, r.accepted) for r in decoded.rejections] == [(1, Reason.PARTIAL_BATCH, 2)]


# --- long and deeply nested arrays ------------------------------------------------------------


def test_a_million_element_array_is_accepted_whole() -> None:
    value = b"[" + b",".join(b"%d" % (i % 1000) for i in range(1_000_000)) + b"]"
    array, rejection = decode_value(value)
    assert rejection is None
    assert array.size == 1_000_000
    assert array[:3].tolist() == [0.0, 1.0, 2.0]


def test_a_long_array_with_one_bad_element_at_the_end_keeps_the_rest_and_names_it() -> None:
    value = orjson.dumps([*range(200_000), "x"])
    array, rejection = decode_value(value)
    assert array.size == 200_000
    assert rejection is not None
    assert rejection.reason is Reason.PARTIAL_BATCH
    assert [(b.index, b.reason) for b in rejection.bad_elements] == [(200_000, Reason.NOT_A_NUMBER)]


def test_a_long_array_over_the_size_limit_is_too_large_before_parsing() -> None:
    options = CodecOptions(max_value_bytes=1024 * 1024)
    value = b"[" + b"1," * (options.max_value_bytes // 2) + b"1]"
    for batch in ([value], [b"1", value, b"2"]):
        decoded = decode_batch(batch, options)
        assert [r.reason for r in decoded.rejections] == [Reason.TOO_LARGE]
        assert decoded.values.size == len(batch) - 1


@pytest.mark.parametrize("depth", [2, 100, 600, 999, 1000, 1025, 10_000, 100_000])
@pytest.mark.parametrize("inner", [b"", b"1", b"1e400", b"NaN"])
def test_deeply_nested_arrays_are_rejected_without_recursion_errors(depth: int, inner: bytes) -> None:
    # ``inner`` 1e400 takes the standard-library fallback parser, which recurses per level.
    for value in (b"[" * depth, b"[" * depth + inner + b"]" * depth, b"[1, " + b"[" * depth + inner + b"]" * depth):
        for options in (STRICT, LENIENT):
            array, rejection = decode_value(value, options)
            check_outcome(value, array, rejection, options)
            assert rejection is not None
            if value.startswith(b"[1, ") and rejection.reason is Reason.PARTIAL_BATCH:
                assert array.tolist() == [1.0]
                assert [(b.index, b.reason) for b in rejection.bad_elements] == [(1, Reason.NESTED_ARRAY)]
            else:
                assert array.size == 0
                assert rejection.reason in {Reason.NESTED_ARRAY, Reason.MALFORMED_JSON}, (depth, inner, rejection)


# --- numbers as strings, NaN and Infinity tokens ----------------------------------------------


@FAST
@given(number=st.floats(allow_nan=False, allow_infinity=False) | st.integers())
def test_numbers_as_strings_are_not_numbers(number: float) -> None:
    quoted = orjson.dumps(str(number))
    array, rejection = decode_value(quoted)
    assert array.size == 0
    assert rejection is not None
    assert rejection.reason is Reason.NOT_A_NUMBER
    array, rejection = decode_value(b"[" + quoted + b", 2.5]")
    assert array.tolist() == [2.5]
    assert rejection is not None
    assert [(b.index, b.reason) for b in rejection.bad_elements] == [(0, Reason.NOT_A_NUMBER)]


@pytest.mark.parametrize(
    "value",
    [b"NaN", b"-NaN", b"nan", b"Infinity", b"-Infinity", b"inf", b"-inf", b"[NaN]", b"[1, Infinity]",
     b"[-Infinity, 2]", b"1e400 NaN"],
)  # fmt: skip
@BOTH
def test_nan_and_infinity_tokens_are_not_json(value: bytes, options: CodecOptions) -> None:
    for decoded in (decode_batch([value], options), decode_batch([b"7", value, b"8"], options)):
        assert [r.reason for r in decoded.rejections] == [Reason.MALFORMED_JSON]
        assert not np.isnan(decoded.values).any()
        assert np.isfinite(decoded.values).all()


# --- oversized values -------------------------------------------------------------------------


@FAST
@given(value=st.binary(min_size=2, max_size=300), data=st.data())
def test_any_value_over_max_value_bytes_is_too_large_whatever_it_holds(value: bytes, data: st.DataObject) -> None:
    limit = data.draw(st.integers(1, len(value) - 1))
    options = CodecOptions(max_value_bytes=limit)
    for candidate in (value, b"1" * len(value), FLOAT64_MAGIC + value, b"[" + value + b"]"):
        array, rejection = decode_value(candidate, options)
        assert array.size == 0
        assert rejection is not None
        assert rejection.reason is Reason.TOO_LARGE
        decoded = decode_batch([b"1", candidate, b"2"], options)
        assert [(r.index, r.reason) for r in decoded.rejections] == [(1, Reason.TOO_LARGE)]
        assert decoded.values.tolist() == [1.0, 2.0]


def test_a_value_of_exactly_max_value_bytes_is_decoded() -> None:
    options = CodecOptions(max_value_bytes=64)
    value = b"1" + b" " * 63
    assert decode_value(value, options)[1] is None
    assert decode_value(value + b" ", options)[1] == Rejection(
        0, Reason.TOO_LARGE, "65 bytes exceeds max_value_bytes=64"
    )


# --- float64 blocks ---------------------------------------------------------------------------


@BOTH
@FAST
@given(payload=st.binary(max_size=200))
def test_float64_block_of_any_payload_accounts_for_every_double(payload: bytes, options: CodecOptions) -> None:
    array, rejection = decode_value(FLOAT64_MAGIC + payload, options)
    check_outcome(payload, array, rejection, options)
    if not payload or len(payload) % 8:
        assert rejection is not None
        assert rejection.reason is Reason.BAD_FLOAT64_BLOCK
        assert array.size == 0
        return
    doubles = struct.unpack(f"<{len(payload) // 8}d", payload)
    keep = [x for x in doubles if math.isfinite(x) or (options.accept_infinity and math.isinf(x))]
    assert array.tobytes() == np.array(keep, dtype=np.float64).tobytes()
    dropped = rejection.rejected_count if rejection is not None else 0
    assert array.size + dropped == len(doubles)


@pytest.mark.parametrize("extra", [1, 3, 7, 9, 15])
def test_float64_block_with_a_ragged_tail_is_rejected_whole(extra: int) -> None:
    value = encode_float64_block([1.0, 2.0, 3.0]) + b"\x00" * extra
    array, rejection = decode_value(value)
    assert array.size == 0
    assert rejection is not None
    assert rejection.reason is Reason.BAD_FLOAT64_BLOCK
    assert f"{24 + extra} bytes" in rejection.detail


# --- accounting for arrays of anything --------------------------------------------------------

ELEMENT = st.one_of(
    st.floats(),  # includes NaN and inf
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-(10**400), 10**400),  # past a double's range: an overflow
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.lists(st.integers(-5, 5), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


def _json_element(item: object) -> bytes:
    if isinstance(item, float) and not math.isfinite(item):
        # JSON cannot spell NaN or inf; a producer that tries sends an overflow (inf) or junk.
        return b"1e400" if item > 0 else b"-1e400" if item < 0 else b'"nan"'
    return json.dumps(item).encode()  # the standard library spells integers of any size


@BOTH
@FAST
@given(items=st.lists(ELEMENT, min_size=1, max_size=30))
def test_every_element_of_an_array_is_accepted_or_rejected_exactly_once(
    items: list[object], options: CodecOptions
) -> None:
    value = b"[" + b",".join(_json_element(item) for item in items) + b"]"
    array, rejection = decode_value(value, options)
    check_outcome(value, array, rejection, options)
    rejected = 0 if rejection is None else rejection.rejected_count
    assert array.size + rejected == len(items)
    if rejection is not None and rejection.bad_elements:
        kept_positions = sorted(set(range(len(items))) - {b.index for b in rejection.bad_elements})
        assert len(kept_positions) == array.size
