"""Shard state (sketch, offset, rejection counts), its serialization, and the envelope."""

from __future__ import annotations

import math
import struct

import datasketches
import numpy as np
import pytest

from pipeline.core.envelope import Envelope, EnvelopeError, pack_envelope, unpack_envelope
from pipeline.core.sketch import STATE_VERSION, QuantileBand, ShardState, quantile_band

MAGIC = b"TEST"


def filled_state(shard: int = 2, count: int = 5000, offset: int = 41) -> ShardState:
    state = ShardState.empty(shard, 200)
    state.apply(np.arange(count, dtype=np.float64), offset, {"non_finite": 3, "malformed_json": 1})
    return state


# --- ShardState -------------------------------------------------------------------------------


def test_empty_state_has_no_numbers_and_no_offset() -> None:
    state = ShardState.empty(5, 200)
    assert (state.shard, state.n, state.last_offset, state.rejected) == (5, 0, -1, {})
    assert state.sketch.k == 200
    assert state.is_new(0)


def test_apply_counts_numbers_moves_offset_and_adds_rejections() -> None:
    state = ShardState.empty(0, 200)
    state.apply(np.array([1.0, 2.0, 3.0]), 10, {"non_finite": 2})
    state.apply(np.array([4.0]), 12, {"non_finite": 1, "empty": 4})
    assert state.n == 4
    assert state.last_offset == 12
    assert state.rejected == {"non_finite": 3, "empty": 4}
    assert state.sketch.get_max_value() == 4.0
    assert not state.is_new(12)
    assert not state.is_new(3)
    assert state.is_new(13)


def test_apply_of_no_numbers_still_moves_the_offset() -> None:
    state = ShardState.empty(0, 200)
    state.apply(np.empty(0), 7, {"malformed_json": 1})
    assert (state.n, state.last_offset, state.rejected) == (0, 7, {"malformed_json": 1})


@pytest.mark.parametrize("offset", [41, 40, 0, -1])
def test_apply_refuses_an_offset_already_applied_and_changes_nothing(offset: int) -> None:
    state = filled_state(offset=41)
    before = state.to_bytes()
    with pytest.raises(ValueError, match="already applied"):
        state.apply(np.array([1.0, 2.0]), offset, {"empty": 1})
    assert state.to_bytes() == before
    assert state.n == 5000


def test_state_round_trips_through_bytes() -> None:
    state = filled_state(shard=3, offset=99)
    restored = ShardState.from_bytes(state.to_bytes())
    assert (restored.shard, restored.last_offset, restored.rejected) == (3, 99, state.rejected)
    assert restored.n == state.n
    assert restored.sketch.serialize() == state.sketch.serialize()
    assert restored.sketch.get_quantile(0.5) == state.sketch.get_quantile(0.5)
    restored.apply(np.array([1.0]), 100)  # the restored state keeps working
    assert restored.n == state.n + 1


def test_empty_state_round_trips_through_bytes() -> None:
    restored = ShardState.from_bytes(ShardState.empty(1, 64).to_bytes())
    assert (restored.shard, restored.n, restored.last_offset, restored.rejected) == (1, 0, -1, {})
    assert restored.sketch.k == 64


def _with_header(header: dict[str, object], payload: bytes | None = None) -> bytes:
    return pack_envelope(
        b"DMST", STATE_VERSION, header, filled_state().sketch.serialize() if payload is None else payload
    )


GOOD_HEADER = {"shard": 2, "last_offset": 41, "rejected": {}}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"DMST\x01", "truncated"),
        (b"XXXX" + filled_state().to_bytes()[4:], "bad_magic"),
        (pack_envelope(b"DMST", STATE_VERSION + 1, GOOD_HEADER, b""), "unsupported_version"),
        (_with_header({"shard": 2, "rejected": {}}), "bad_state"),
        (_with_header({**GOOD_HEADER, "shard": "two"}), "bad_state"),
        (_with_header({**GOOD_HEADER, "rejected": [1, 2]}), "bad_state"),
        (_with_header(GOOD_HEADER, b"not a sketch at all"), "bad_state"),
    ],
)
def test_corrupt_state_bytes_raise_envelope_error(data: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        ShardState.from_bytes(data)
    assert caught.value.reason == reason


@pytest.mark.parametrize("cut", [1, 8, 100, None])
def test_state_with_a_truncated_sketch_raises_envelope_error(cut: int | None) -> None:
    # A crash mid-write or a damaged changelog record must surface as EnvelopeError, like any corrupt state.
    state = filled_state()
    data = state.to_bytes()
    cut = len(state.sketch.serialize()) if cut is None else cut  # None: the whole sketch is missing
    with pytest.raises(EnvelopeError) as caught:
        ShardState.from_bytes(data[:-cut])
    assert caught.value.reason == "bad_state"


# --- quantile_band ----------------------------------------------------------------------------


def test_quantile_band_of_an_empty_sketch_is_nan() -> None:
    band = quantile_band(datasketches.kll_doubles_sketch(200), 0.5, 0.01)
    assert all(math.isnan(x) for x in (band.value, band.lower, band.upper))


@pytest.mark.parametrize(("q", "error"), [(0.0, 0.05), (0.01, 0.05), (1.0, 0.05), (0.99, 0.05), (0.5, 2.0)])
def test_quantile_band_clamps_ranks_to_the_unit_interval(q: float, error: float) -> None:
    sketch = datasketches.kll_doubles_sketch(200)
    sketch.update(np.arange(100, dtype=np.float64))  # fewer than k: the sketch is exact
    band = quantile_band(sketch, q, error)
    assert band.value == sketch.get_quantile(q)
    assert band.lower == sketch.get_quantile(max(q - error, 0.0))
    assert band.upper == sketch.get_quantile(min(q + error, 1.0))
    if q - error < 0:
        assert band.lower == 0.0
    if q + error > 1:
        assert band.upper == 99.0


def test_quantile_band_brackets_the_estimate() -> None:
    sketch = datasketches.kll_doubles_sketch(200)
    sketch.update(np.random.default_rng(0).normal(size=20_000))
    band = quantile_band(sketch, 0.5, 0.02)
    assert band.lower < band.value < band.upper
    assert band == QuantileBand(sketch.get_quantile(0.5), sketch.get_quantile(0.48), sketch.get_quantile(0.52))


# --- envelope ---------------------------------------------------------------------------------


def test_envelope_round_trips_header_and_payload() -> None:
    header = {"a": 1, "b": [1.5, None], "c": "x"}
    data = pack_envelope(MAGIC, 3, header, b"\x00\xffpayload")
    assert data[:4] == MAGIC
    assert unpack_envelope(data, MAGIC, 3) == Envelope(3, header, b"\x00\xffpayload")


def test_envelope_with_empty_payload_round_trips() -> None:
    assert unpack_envelope(pack_envelope(MAGIC, 1, {}, b""), MAGIC, 1) == Envelope(1, {}, b"")


@pytest.mark.parametrize("length", [0, 1, 4, 8])
def test_envelope_shorter_than_its_prefix_is_truncated(length: int) -> None:
    data = pack_envelope(MAGIC, 1, {"x": 1}, b"p")[:length]
    with pytest.raises(EnvelopeError) as caught:
        unpack_envelope(data, MAGIC, 1)
    assert caught.value.reason == "truncated"
    assert f"{length} bytes" in caught.value.detail


@pytest.mark.parametrize("length", [9, 10, 15])
def test_envelope_cut_inside_its_header_is_truncated(length: int) -> None:
    data = pack_envelope(MAGIC, 1, {"x": 12345}, b"p")[:length]
    with pytest.raises(EnvelopeError) as caught:
        unpack_envelope(data, MAGIC, 1)
    assert caught.value.reason == "truncated"


def test_envelope_with_wrong_magic_is_refused() -> None:
    with pytest.raises(EnvelopeError) as caught:
        unpack_envelope(pack_envelope(b"OTHR", 1, {}, b""), MAGIC, 1)
    assert caught.value.reason == "bad_magic"
    assert "OTHR" in caught.value.detail


@pytest.mark.parametrize(("version", "word"), [(2, "newer"), (9, "newer"), (0, "older")])
def test_envelope_of_another_version_is_refused(version: int, word: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        unpack_envelope(pack_envelope(MAGIC, version, {}, b""), MAGIC, 1)
    assert caught.value.reason == "unsupported_version"
    assert f"version {version} is {word}" in str(caught.value)


@pytest.mark.parametrize("header", [b"[1, 2]", b"3", b'"s"', b"null", b"{bad json"])
def test_envelope_header_must_be_a_json_object(header: bytes) -> None:
    data = struct.pack("<4sBI", MAGIC, 1, len(header)) + header + b"payload"
    with pytest.raises(EnvelopeError) as caught:
        unpack_envelope(data, MAGIC, 1)
    assert caught.value.reason == "bad_header"


def test_envelope_error_is_a_value_error_with_reason_and_detail() -> None:
    error = EnvelopeError("bad_magic", "what went wrong")
    assert isinstance(error, ValueError)
    assert str(error) == "bad_magic: what went wrong"
    assert (error.reason, error.detail) == ("bad_magic", "what went wrong")


def test_a_band_past_rank_zero_or_one_ends_at_the_exact_min_and_max() -> None:
    # Heavy tails: the sketch keeps few extreme items, so its quantile at 0 or 1
    # need not be the true extreme; the band must still contain the quantile.
    rng = np.random.default_rng(5)
    data = rng.pareto(1.1, 2_000_000) * np.where(rng.random(2_000_000) < 0.5, -1, 1)
    sketch = datasketches.kll_doubles_sketch(200)
    sketch.update(data)
    error = float(sketch.normalized_rank_error(False))
    for q in (0.001, 0.999):
        band = quantile_band(sketch, q, error)
        exact = float(np.quantile(data, q))
        assert band.lower <= exact <= band.upper
    assert quantile_band(sketch, 0.001, error).lower == data.min()
    assert quantile_band(sketch, 0.999, error).upper == data.max()
