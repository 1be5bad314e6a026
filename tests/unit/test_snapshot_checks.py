"""Plausibility checks of ``sketches`` messages: forged snapshots and heartbeats are refused by name."""

from __future__ import annotations

import dataclasses
import math
import struct

import datasketches
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.envelope import pack_envelope, unpack_envelope
from pipeline.core.sketch import QuantileBand, ShardState
from pipeline.core.snapshot_checks import (
    SnapshotLimits,
    check_progress,
    check_sketches_message,
    check_snapshot,
    kll_layout,
    max_numbers_per_record,
)
from pipeline.core.wire import (
    SNAPSHOT_VERSION,
    ShardProgress,
    SketchSnapshot,
    SnapshotError,
    parse_sketches_value,
)

FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MAGIC = b"DMSK"
LIMITS = SnapshotLimits(shards=8)
LENIENT = SnapshotLimits(shards=8, accept_infinity=True)


def snapshot_of(values: np.ndarray, shard: int = 3, last_offset: int = 99, k: int = 200) -> SketchSnapshot:
    state = ShardState.empty(shard, k)
    state.apply(np.asarray(values, dtype=np.float64), last_offset, {"malformed_json": 1})
    return SketchSnapshot.from_state(state, ts=1_700_000_000_000)


def verdict(data: bytes, limits: SnapshotLimits = LIMITS) -> str | None:
    """What the aggregator decides: None to merge, else the rejection reason."""
    try:
        check_sketches_message(parse_sketches_value(data), limits)
    except SnapshotError as exc:
        return exc.reason
    return None


def with_header(snapshot: SketchSnapshot, **fields: object) -> bytes:
    """The snapshot's bytes with header fields replaced (a forger's tool)."""
    header = unpack_envelope(snapshot.to_bytes(), MAGIC, SNAPSHOT_VERSION).header
    return pack_envelope(MAGIC, SNAPSHOT_VERSION, {**header, **fields}, snapshot.sketch_bytes)


def with_sketch(snapshot: SketchSnapshot, sketch: bytes, **fields: object) -> bytes:
    header = unpack_envelope(snapshot.to_bytes(), MAGIC, SNAPSHOT_VERSION).header
    return pack_envelope(MAGIC, SNAPSHOT_VERSION, {**header, **fields}, sketch)


def patch(data: bytes, offset: int, fmt: str, *values: object) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, offset, *values)
    return bytes(patched)


BIG = snapshot_of(np.random.default_rng(1).lognormal(size=20_000))
BIG_LAYOUT = kll_layout(BIG.sketch_bytes)
ITEMS_START = len(BIG.sketch_bytes) - 8 * BIG_LAYOUT.items.size


# --- genuine snapshots pass ---------------------------------------------------------------------


@FAST
@given(
    size=st.integers(0, 5000),
    k=st.sampled_from([8, 50, 200]),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["normal", "sorted", "reversed", "constant", "tiny"]),
)
def test_every_genuine_shard_snapshot_passes(size: int, k: int, seed: int, kind: str) -> None:
    values = np.random.default_rng(seed).normal(size=size)
    values = {
        "normal": values,
        "sorted": np.sort(values),
        "reversed": np.sort(values)[::-1],
        "constant": np.full(size, 2.5),
        "tiny": values * 1e-310,  # subnormals
    }[kind]
    snapshot = snapshot_of(values, shard=7, last_offset=max(size - 1, 0), k=k)
    layout = kll_layout(snapshot.sketch_bytes)
    assert layout.n == layout.weight == size
    assert verdict(snapshot.to_bytes()) is None


def test_a_shard_fed_in_many_batches_passes() -> None:
    state = ShardState.empty(0, 200)
    rng = np.random.default_rng(2)
    for offset in range(300):
        state.apply(rng.pareto(1.5, size=int(rng.integers(0, 700))), offset)
    snapshot = SketchSnapshot.from_state(state, ts=1)
    assert verdict(snapshot.to_bytes()) is None


@pytest.mark.parametrize("sizes", [(12_345, 777), (100, 100), (5000, 300_000), (1, 0), (0, 1)])
def test_the_layout_weight_of_a_merged_sketch_is_its_n(sizes: tuple[int, int]) -> None:
    # Merging can leave level 0 empty and shift the level offsets: the reader must follow.
    rng = np.random.default_rng(3)
    merged = datasketches.kll_doubles_sketch(200)
    for size in sizes:
        part = datasketches.kll_doubles_sketch(200)
        if size:
            part.update(rng.normal(size=size))
        merged.merge(part)
    layout = kll_layout(merged.serialize())
    assert layout.n == layout.weight == sum(sizes)
    assert layout.items.size == merged.num_retained


def test_a_snapshot_with_infinities_passes_only_when_infinity_is_accepted() -> None:
    snapshot = snapshot_of(np.array([1.0, math.inf, -math.inf, math.inf, 2.0]))
    data = snapshot.to_bytes()
    assert math.isnan(SketchSnapshot.from_bytes(data).max)  # JSON writes null for an infinity
    assert verdict(data, LENIENT) is None
    assert verdict(data, LIMITS) == "non_finite"


# --- forged shard ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(("shard", "shards", "reason"), [(7, 8, None), (8, 8, "unknown_shard"),
                                                          (999_999, 8, "unknown_shard"), (8, 12, None)])  # fmt: skip
def test_a_shard_id_must_name_a_partition_of_the_input_topic(shard: int, shards: int, reason: str | None) -> None:
    snapshot = snapshot_of(np.arange(10.0), shard=shard)
    limits = SnapshotLimits(shards=shards)
    assert verdict(snapshot.to_bytes(), limits) == reason
    progress = ShardProgress(shard, 10, 12, 99, 1)
    assert verdict(progress.to_bytes(), limits) == reason


def test_an_unknown_shard_names_the_shard_and_the_partition_count() -> None:
    with pytest.raises(SnapshotError) as caught:
        check_snapshot(snapshot_of(np.arange(3.0), shard=9), LIMITS)
    assert caught.value.reason == "unknown_shard"
    assert "shard 9" in caught.value.detail
    assert "8" in caught.value.detail


# --- forged counts ------------------------------------------------------------------------------


def test_n_of_10_to_the_18_over_a_tiny_sketch_is_refused_however_it_is_forged() -> None:
    tiny = snapshot_of(np.arange(1000.0))
    absurd = 10**18
    # The header alone: the sketch contradicts it (wire.py's check).
    assert verdict(with_header(tiny, n=absurd, last_offset=absurd)) == "inconsistent"
    # Header and the sketch's own n field both patched: the items' weight contradicts them.
    forged_sketch = patch(tiny.sketch_bytes, 8, "<Q", absurd)
    assert datasketches.kll_doubles_sketch.deserialize(forged_sketch).n == absurd  # the library takes it
    assert verdict(with_sketch(tiny, forged_sketch, n=absurd, last_offset=absurd)) == "inconsistent"
    # Off by one is refused as surely.
    off_by_one = patch(tiny.sketch_bytes, 8, "<Q", 1001)
    assert verdict(with_sketch(tiny, off_by_one, n=1001)) == "inconsistent"


@pytest.mark.parametrize(("field", "value"), [("n", -1), ("last_offset", -2), ("shard", -1)])
def test_negative_counts_offsets_and_ids_are_refused(field: str, value: int) -> None:
    assert verdict(with_header(snapshot_of(np.arange(5.0)), **{field: value})) is not None


def test_n_beyond_what_the_records_up_to_last_offset_could_carry_is_implausible() -> None:
    snapshot = snapshot_of(np.arange(1000.0), last_offset=4)
    assert max_numbers_per_record(64) == 31
    # 5 records of at most 64 bytes hold at most 155 numbers.
    assert verdict(snapshot.to_bytes(), SnapshotLimits(8, max_value_bytes=64)) == "implausible_count"
    assert verdict(snapshot.to_bytes(), SnapshotLimits(8, max_value_bytes=401)) is None  # 5 * 200 = 1000
    assert verdict(snapshot.to_bytes(), SnapshotLimits(8, max_value_bytes=400)) == "implausible_count"
    # Numbers before any record: last_offset -1 with n > 0.
    assert verdict(with_header(snapshot, last_offset=-1)) == "implausible_count"


def test_a_negative_rejected_count_is_implausible() -> None:
    assert verdict(with_header(snapshot_of(np.arange(5.0)), rejected=-3)) == "implausible_count"


@pytest.mark.parametrize("rank_error", [-0.1, 1.5])
def test_a_rank_error_outside_0_1_is_a_bad_header(rank_error: float) -> None:
    assert verdict(with_header(snapshot_of(np.arange(5.0)), rank_error=rank_error)) == "bad_header"


def test_a_heartbeat_claiming_more_than_its_records_could_carry_is_implausible() -> None:
    limits = SnapshotLimits(8, max_value_bytes=64)
    check_progress(ShardProgress(2, 10, 31 * 5, 4, 1), limits)
    with pytest.raises(SnapshotError) as caught:
        check_progress(ShardProgress(2, 10, 31 * 5 + 1, 4, 1), limits)
    assert caught.value.reason == "implausible_count"
    assert verdict(ShardProgress(2, 0, 10**18, 3, 1).to_bytes()) == "implausible_count"


# --- forged sketch contents ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [(math.nan, "non_finite"), (math.inf, "inconsistent"), (-math.inf, "inconsistent"), (1e300, "inconsistent")],
)
def test_an_item_patched_to_nan_infinity_or_beyond_max_is_refused(bad: float, reason: str) -> None:
    forged = patch(BIG.sketch_bytes, len(BIG.sketch_bytes) - 8, "<d", bad)
    datasketches.kll_doubles_sketch.deserialize(forged)  # the library takes it
    for limits in (LIMITS, LENIENT):
        assert verdict(with_sketch(BIG, forged), limits) == reason


def test_an_infinity_with_a_matching_stated_max_is_refused_unless_infinity_is_accepted() -> None:
    levels_end = ITEMS_START - 16  # min and max sit between the level offsets and the items
    forged = patch(patch(BIG.sketch_bytes, len(BIG.sketch_bytes) - 8, "<d", math.inf), levels_end + 8, "<d", math.inf)
    message = with_sketch(BIG, forged, max=None)  # JSON spells an infinite max as null
    assert verdict(message, LIMITS) == "non_finite"
    assert verdict(message, LENIENT) is None


def test_an_unsorted_compacted_level_is_a_bad_sketch() -> None:
    levels = BIG_LAYOUT.levels
    level = next(h for h in range(1, len(levels) - 1) if levels[h + 1] - levels[h] >= 2)
    first = ITEMS_START + 8 * levels[level]
    a, b = struct.unpack_from("<2d", BIG.sketch_bytes, first)
    assert a < b
    forged = patch(BIG.sketch_bytes, first, "<2d", b, a)
    assert verdict(with_sketch(BIG, forged)) == "bad_sketch"


@pytest.mark.parametrize(
    "fields",
    [{"min": -1e9}, {"max": 1e9}, {"min": None}, {"median": {"value": 1e9, "lower": 0.0, "upper": 1e9}}],
)
def test_header_statistics_that_the_sketch_contradicts_are_inconsistent(fields: dict[str, object]) -> None:
    assert verdict(with_header(BIG, **fields)) == "inconsistent"


def test_an_empty_sketch_with_a_median_is_inconsistent() -> None:
    empty = snapshot_of(np.empty(0), last_offset=5)
    assert verdict(empty.to_bytes()) is None
    forged = dataclasses.replace(empty, median=QuantileBand(1.0, 1.0, 1.0))
    with pytest.raises(SnapshotError) as caught:
        check_snapshot(forged, LIMITS)
    assert caught.value.reason == "inconsistent"


@pytest.mark.parametrize(
    ("sketch", "why"),
    [
        (b"", "too short"),
        (b"\x05\x01\x0e\x00\xc8\x00\x08\x00", "family"),
        (b"\x03\x01\x0f\x00\xc8\x00\x08\x00", "layout"),
    ],
)
def test_bytes_that_are_not_a_kll_layout_are_a_bad_sketch(sketch: bytes, why: str) -> None:
    with pytest.raises(SnapshotError) as caught:
        kll_layout(sketch)
    assert caught.value.reason == "bad_sketch"
    assert why in caught.value.detail


def test_a_sketch_object_that_does_not_deserialize_is_a_bad_sketch_not_a_crash() -> None:
    # check_snapshot on a snapshot built in code (not parsed): the library's error becomes a SnapshotError.
    forged = dataclasses.replace(BIG, sketch_bytes=BIG.sketch_bytes[:-8])
    with pytest.raises(SnapshotError):
        check_snapshot(forged, LIMITS)


@FAST
@given(data=st.data())
def test_any_mutation_of_a_genuine_snapshot_is_merged_only_if_it_passes_every_check(data: st.DataObject) -> None:
    # Flip bytes anywhere in the sketch: the verdict is a SnapshotError or a pass, never another exception;
    # and what passes is a sketch whose weight is its n and whose items are finite and sorted per level.
    sketch = bytearray(BIG.sketch_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        sketch[data.draw(st.integers(0, len(sketch) - 1))] = data.draw(st.integers(0, 255))
    message = with_sketch(BIG, bytes(sketch))
    if verdict(message) is None:
        layout = kll_layout(bytes(sketch))
        assert layout.weight == layout.n == BIG.n
        assert np.isfinite(layout.items).all()


@FAST
@given(cut=st.integers(0, len(BIG.sketch_bytes) - 1))
def test_a_truncated_sketch_never_passes(cut: int) -> None:
    assert verdict(with_sketch(BIG, BIG.sketch_bytes[:cut])) is not None


@FAST
@given(payload=st.binary(max_size=400))
def test_random_sketch_bytes_are_refused_with_a_snapshot_error(payload: bytes) -> None:
    assert verdict(with_sketch(BIG, payload)) is not None
    # The check alone (the header is the genuine one): random bytes never pass as a sketch.
    with pytest.raises(SnapshotError) as caught:
        check_snapshot(dataclasses.replace(BIG, sketch_bytes=payload), LIMITS)
    assert caught.value.reason in {"bad_sketch", "inconsistent", "non_finite"}


def test_every_reader_refuses_forged_contents_when_parsing_not_only_the_aggregator() -> None:
    # The aggregator's rebuild and the tools read sketches with from_bytes alone: no limits needed.
    tiny = snapshot_of(np.arange(1000.0))
    forged = [
        with_sketch(tiny, patch(tiny.sketch_bytes, 8, "<Q", 10**18), n=10**18, last_offset=10**18),
        with_sketch(BIG, patch(BIG.sketch_bytes, len(BIG.sketch_bytes) - 8, "<d", math.nan)),
        with_header(BIG, last_offset=-1),
        with_header(BIG, max=1e9),
    ]
    for data in forged:
        with pytest.raises(SnapshotError):
            SketchSnapshot.from_bytes(data)


@pytest.mark.parametrize("k", [8, 200, 1000])
@pytest.mark.parametrize("n", [2, 1_000, 300_000])
def test_the_capacity_check_passes_genuine_sketches_and_refuses_every_truncation_before_cpp_reads_it(
    k: int, n: int
) -> None:
    # The C++ deserializer reads capacity - levels[0] items whatever the buffer's length,
    # so every cut must be refused by the Python layout check, before it gets there.
    sketch = datasketches.kll_doubles_sketch(k)
    sketch.update(np.random.default_rng(n).lognormal(size=n))
    data = sketch.serialize()
    kll_layout(data)
    for cut in range(len(data)):
        with pytest.raises(SnapshotError):
            kll_layout(data[:cut])
