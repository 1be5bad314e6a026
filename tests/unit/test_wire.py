"""Wire messages: sketch snapshots, median records and dead letters."""

from __future__ import annotations

import base64
import dataclasses
import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.dead_letter import DeadLetter
from pipeline.core.envelope import pack_envelope, unpack_envelope
from pipeline.core.sketch import QuantileBand, ShardState
from pipeline.core.wire import (
    MEDIAN_RECORD_VERSION,
    PROGRESS_VERSION,
    SNAPSHOT_VERSION,
    MedianRecord,
    QuantileEstimate,
    ShardProgress,
    SketchSnapshot,
    SnapshotError,
    parse_sketches_value,
    quantile_key,
)

FAST = settings(max_examples=200, deadline=None, database=None)
MAGIC = b"DMSK"


def snapshot_with_data(shard: int = 4) -> SketchSnapshot:
    state = ShardState.empty(shard, 200)
    state.apply(np.random.default_rng(shard).lognormal(size=10_000), 77, {"non_finite": 2, "empty": 3})
    return SketchSnapshot.from_state(state, ts=1_700_000_000_000)


SNAPSHOT = snapshot_with_data()
DATA = SNAPSHOT.to_bytes()
HEADER = unpack_envelope(DATA, MAGIC, SNAPSHOT_VERSION).header
HEADER_END = len(DATA) - len(SNAPSHOT.sketch_bytes)


def rejected_reason(data: bytes) -> str:
    with pytest.raises(SnapshotError) as caught:
        SketchSnapshot.from_bytes(data)
    return caught.value.reason


# --- SketchSnapshot ---------------------------------------------------------------------------


def test_snapshot_of_a_state_with_data_describes_it() -> None:
    sketch = SNAPSHOT.sketch()
    assert (SNAPSHOT.shard, SNAPSHOT.n, SNAPSHOT.last_offset, SNAPSHOT.k) == (4, 10_000, 77, 200)
    assert SNAPSHOT.rejected == 5
    assert (SNAPSHOT.min, SNAPSHOT.max) == (sketch.get_min_value(), sketch.get_max_value())
    assert SNAPSHOT.median.lower <= SNAPSHOT.median.value <= SNAPSHOT.median.upper
    assert SNAPSHOT.rank_error == sketch.normalized_rank_error(False)
    assert sketch.n == 10_000


def test_snapshot_round_trips_through_bytes() -> None:
    restored = SketchSnapshot.from_bytes(DATA)
    assert restored == SNAPSHOT
    assert restored.to_bytes() == DATA


def test_an_urgent_snapshot_says_so_in_14_header_bytes_and_others_not_at_all() -> None:
    urgent = dataclasses.replace(SNAPSHOT, urgent=True)
    data = urgent.to_bytes()
    assert unpack_envelope(data, MAGIC, SNAPSHOT_VERSION).header == {**HEADER, "urgent": True}
    assert "urgent" not in HEADER
    assert len(data) - len(DATA) == len(',"urgent":true') == 14
    assert SketchSnapshot.from_bytes(data) == urgent


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_an_urgent_flag_that_is_not_a_boolean_is_bad_header(bad: object) -> None:
    data = pack_envelope(MAGIC, SNAPSHOT_VERSION, {**HEADER, "urgent": bad}, SNAPSHOT.sketch_bytes)
    assert rejected_reason(data) == "bad_header"


def test_snapshot_of_an_empty_state_round_trips_with_nan_statistics() -> None:
    empty = SketchSnapshot.from_state(ShardState.empty(0, 200), ts=5)
    data = empty.to_bytes()
    header = unpack_envelope(data, MAGIC, SNAPSHOT_VERSION).header
    assert header["min"] is None
    assert header["median"] == {"value": None, "lower": None, "upper": None}
    restored = SketchSnapshot.from_bytes(data)
    assert (restored.n, restored.last_offset, restored.rejected, restored.ts) == (0, -1, 0, 5)
    nans = (restored.min, restored.max, restored.median.value, restored.median.lower, restored.median.upper)
    assert all(math.isnan(x) for x in nans)
    assert restored.sketch().is_empty()


def test_snapshot_of_a_newer_version_is_refused_naming_the_version() -> None:
    data = pack_envelope(MAGIC, SNAPSHOT_VERSION + 1, HEADER, SNAPSHOT.sketch_bytes)
    with pytest.raises(SnapshotError) as caught:
        SketchSnapshot.from_bytes(data)
    assert caught.value.reason == "unsupported_version"
    assert f"version {SNAPSHOT_VERSION + 1}" in str(caught.value)


@pytest.mark.parametrize("magic", [b"DMST", b"DMF8", b"\x00\x00\x00\x00"])
def test_snapshot_with_wrong_magic_is_refused(magic: bytes) -> None:
    assert rejected_reason(magic + DATA[4:]) == "bad_magic"


# Cut points by name: the sketch's serialized size varies from run to run (KLL compaction is randomized).
PREFIX_CUTS = {
    "nothing": 0,
    "magic only": 3,
    "no header length": 8,
    "prefix only": 9,
    "last header byte": HEADER_END - 1,
}
SKETCH_CUTS = {
    "no sketch": HEADER_END,
    "1 sketch byte": HEADER_END + 1,
    "8 sketch bytes": HEADER_END + 8,
    "half the sketch": (HEADER_END + len(DATA)) // 2,
    "all but 1 byte": len(DATA) - 1,
}


@pytest.mark.parametrize("cut", PREFIX_CUTS)
def test_snapshot_truncated_in_prefix_or_header_is_refused(cut: str) -> None:
    assert rejected_reason(DATA[: PREFIX_CUTS[cut]]) == "truncated"


@pytest.mark.parametrize("cut", SKETCH_CUTS)
def test_snapshot_truncated_in_its_sketch_is_refused(cut: str) -> None:
    # Whatever the cut, a reader must get SnapshotError (not a crash from the sketch library).
    assert rejected_reason(DATA[: SKETCH_CUTS[cut]]) in {"bad_sketch", "truncated"}


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_are_refused_as_snapshot_error(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        SketchSnapshot.from_bytes(data)


@FAST
@given(st.binary(max_size=300))
def test_valid_header_with_random_payload_is_refused_as_snapshot_error(payload: bytes) -> None:
    with pytest.raises(SnapshotError):
        SketchSnapshot.from_bytes(pack_envelope(MAGIC, SNAPSHOT_VERSION, HEADER, payload))


@pytest.mark.parametrize("payload", [b"not a sketch", b"\x00" * 16, b"x" * 2000])
def test_payload_that_is_not_a_sketch_is_bad_sketch(payload: bytes) -> None:
    assert rejected_reason(pack_envelope(MAGIC, SNAPSHOT_VERSION, HEADER, payload)) == "bad_sketch"


@pytest.mark.parametrize(("field", "delta"), [("n", 1), ("n", -1), ("k", 8)])
def test_header_that_disagrees_with_the_sketch_is_inconsistent(field: str, delta: int) -> None:
    forged = dataclasses.replace(SNAPSHOT, **{field: getattr(SNAPSHOT, field) + delta})
    with pytest.raises(SnapshotError) as caught:
        SketchSnapshot.from_bytes(forged.to_bytes())
    assert caught.value.reason == "inconsistent"
    assert str(getattr(forged, field)) in caught.value.detail


@pytest.mark.parametrize("field", ["shard", "n", "last_offset", "k", "ts", "rejected"])
@pytest.mark.parametrize("bad", [True, False, 1.5, "3", None])
def test_header_with_a_non_integer_where_an_int_is_expected_is_bad_header(field: str, bad: object) -> None:
    data = pack_envelope(MAGIC, SNAPSHOT_VERSION, {**HEADER, field: bad}, SNAPSHOT.sketch_bytes)
    assert rejected_reason(data) == "bad_header"


@pytest.mark.parametrize("field", ["min", "max", "rank_error"])
@pytest.mark.parametrize("bad", [True, "1.0", [1.0]])
def test_header_with_a_non_number_where_a_float_is_expected_is_bad_header(field: str, bad: object) -> None:
    data = pack_envelope(MAGIC, SNAPSHOT_VERSION, {**HEADER, field: bad}, SNAPSHOT.sketch_bytes)
    assert rejected_reason(data) == "bad_header"


@pytest.mark.parametrize("field", ["shard", "n", "median", "last_offset", "k", "ts", "rejected", "min"])
def test_header_with_a_missing_field_is_bad_header(field: str) -> None:
    header = {key: value for key, value in HEADER.items() if key != field}
    assert rejected_reason(pack_envelope(MAGIC, SNAPSHOT_VERSION, header, SNAPSHOT.sketch_bytes)) == "bad_header"


@pytest.mark.parametrize(("field", "value"), [("shard", -1), ("n", -5), ("last_offset", -2)])
def test_header_with_a_negative_id_count_or_offset_is_bad_header(field: str, value: int) -> None:
    data = pack_envelope(MAGIC, SNAPSHOT_VERSION, {**HEADER, field: value}, SNAPSHOT.sketch_bytes)
    assert rejected_reason(data) == "bad_header"


# --- ShardProgress (heartbeats on ``sketches``) --------------------------------------------------

PROGRESS = ShardProgress(shard=3, n=1_000_000, ingested=1_250_000, last_offset=98_765, ts=1_700_000_000_000)


def test_progress_round_trips_and_states_what_is_pending() -> None:
    data = PROGRESS.to_bytes()
    assert ShardProgress.from_bytes(data) == PROGRESS
    assert parse_sketches_value(data) == PROGRESS
    assert PROGRESS.pending == 250_000


def test_progress_is_a_header_only_envelope_of_about_a_hundred_bytes() -> None:
    data = PROGRESS.to_bytes()
    envelope = unpack_envelope(data, MAGIC, SNAPSHOT_VERSION)
    assert envelope.payload == b""
    assert envelope.header == {
        "shard": 3,
        "progress": {"v": PROGRESS_VERSION, "n": 1_000_000, "ingested": 1_250_000, "last_offset": 98_765,
                     "ts": 1_700_000_000_000},
    }  # fmt: skip
    assert len(data) <= 110 < len(DATA) // 10


def test_a_snapshot_reader_refuses_a_progress_message_by_name() -> None:
    assert rejected_reason(PROGRESS.to_bytes()) == "not_a_snapshot"


def test_parse_sketches_value_reads_snapshots_too() -> None:
    assert parse_sketches_value(DATA) == SNAPSHOT


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": PROGRESS_VERSION + 1}, "unsupported_version"),
        ({"ingested": 999_999}, "bad_header"),  # fewer ingested than reflected
        ({"n": -1}, "bad_header"),
        ({"ts": "now"}, "bad_header"),
        ({"ingested": None}, "bad_header"),
    ],
)
def test_progress_with_a_bad_field_is_refused(change: dict[str, object], reason: str) -> None:
    header = unpack_envelope(PROGRESS.to_bytes(), MAGIC, SNAPSHOT_VERSION).header
    header["progress"] = {**header["progress"], **change}
    with pytest.raises(SnapshotError) as caught:
        parse_sketches_value(pack_envelope(MAGIC, SNAPSHOT_VERSION, header, b""))
    assert caught.value.reason == reason


def test_progress_with_a_payload_is_refused() -> None:
    header = unpack_envelope(PROGRESS.to_bytes(), MAGIC, SNAPSHOT_VERSION).header
    with pytest.raises(SnapshotError, match="no payload"):
        ShardProgress.from_bytes(pack_envelope(MAGIC, SNAPSHOT_VERSION, header, SNAPSHOT.sketch_bytes))


# --- MedianRecord -----------------------------------------------------------------------------

RECORD = MedianRecord(
    n=1_000_000,
    shards=8,
    median=QuantileBand(10.0, 9.5, 10.5),
    rank_error=0.0133,
    quantiles=(
        QuantileEstimate(0.5, QuantileBand(10.0, 9.5, 10.5), 0.0183),
        QuantileEstimate(0.9, QuantileBand(20.0, 19.0, 21.0), 0.0183),
        QuantileEstimate(0.99, QuantileBand(30.0, 29.0, 31.0), 0.0183),
    ),
    ts=1_700_000_000_123,
    rejected=17,
    theta=0.005,
    pending=4_321,
    stale_shards=1,
    sources=3,
    stale_sources=1,
)


def test_median_record_json_has_exactly_the_documented_keys() -> None:
    body = orjson.loads(RECORD.to_json())
    assert body == {
        "v": MEDIAN_RECORD_VERSION,
        "n": 1_000_000,
        "shards": 8,
        "median": 10.0,
        "lower": 9.5,
        "upper": 10.5,
        "rank_error": 0.0133,
        "theta": 0.005,
        "quantiles": {
            "0.5": {"value": 10.0, "lower": 9.5, "upper": 10.5, "rank_bound": 0.0183},
            "0.9": {"value": 20.0, "lower": 19.0, "upper": 21.0, "rank_bound": 0.0183},
            "0.99": {"value": 30.0, "lower": 29.0, "upper": 31.0, "rank_bound": 0.0183},
        },
        "pending": 4_321,
        "stale_shards": 1,
        "sources": 3,
        "stale_sources": 1,
        "rejected": 17,
        "ts": 1_700_000_000_123,
    }
    assert MEDIAN_RECORD_VERSION == 2


def test_median_record_round_trips_through_json() -> None:
    assert MedianRecord.from_json(RECORD.to_json()) == RECORD


def test_median_record_without_a_budget_states_the_sketch_error_as_its_bound() -> None:
    plain = dataclasses.replace(RECORD, theta=None, quantiles=(QuantileEstimate(0.9, QuantileBand(2.0, 1.0, 3.0)),))
    body = orjson.loads(plain.to_json())
    assert body["theta"] is None
    assert body["quantiles"]["0.9"]["rank_bound"] == plain.rank_bound == 0.0133
    restored = MedianRecord.from_json(plain.to_json())
    assert (restored.theta, restored.quantiles[0].rank_bound) == (None, 0.0133)


def test_a_version_1_record_is_still_read_with_its_rank_error_as_bound() -> None:
    v1 = {
        "v": 1, "n": 10, "shards": 2, "median": 1.0, "lower": 0.5, "upper": 1.5, "rank_error": 0.0133,
        "quantiles": {"0.5": {"value": 1.0, "lower": 0.5, "upper": 1.5}}, "rejected": 3, "ts": 7,
    }  # fmt: skip
    record = MedianRecord.from_json(orjson.dumps(v1))
    assert (record.n, record.shards, record.rejected, record.ts) == (10, 2, 3, 7)
    assert (record.theta, record.pending, record.stale_shards) == (None, 0, 0)
    assert record.quantiles == (QuantileEstimate(0.5, QuantileBand(1.0, 0.5, 1.5), 0.0133),)
    assert record.rank_bound == 0.0133


def test_median_record_of_nothing_serializes_nan_as_null_and_back() -> None:
    nan = math.nan
    record = MedianRecord(
        0, 0, QuantileBand(nan, nan, nan), 0.01, (QuantileEstimate(0.9, QuantileBand(nan, nan, nan)),), 1
    )
    body = orjson.loads(record.to_json())
    assert (body["median"], body["lower"], body["upper"]) == (None, None, None)
    assert body["quantiles"] == {"0.9": {"value": None, "lower": None, "upper": None, "rank_bound": 0.01}}
    restored = MedianRecord.from_json(record.to_json())
    assert (restored.n, restored.shards, restored.rejected, restored.ts) == (0, 0, 0, 1)
    assert math.isnan(restored.median.value)
    assert restored.quantiles[0].q == 0.9
    assert math.isnan(restored.quantiles[0].band.upper)


@pytest.mark.parametrize("version", [0, 3, None, "1", True])
def test_median_record_of_an_unknown_version_is_refused(version: object) -> None:
    body = orjson.loads(RECORD.to_json())
    body["v"] = version
    with pytest.raises(ValueError, match="unsupported median record version"):
        MedianRecord.from_json(orjson.dumps(body))


def test_median_record_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported median record version"):
        MedianRecord.from_json(b"[1, 2]")


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.99, 0.999, 0.9999, 1.0])
def test_quantile_key_reads_back_as_the_same_quantile(q: float) -> None:
    assert float(quantile_key(q)) == q


@pytest.mark.parametrize("q", [0.9999999, 0.1234567])
def test_quantile_with_many_digits_survives_the_record_round_trip(q: float) -> None:
    # format(q, "g") keeps 6 significant digits: 0.9999999 would be published as "1" (the maximum).
    record = dataclasses.replace(RECORD, quantiles=(QuantileEstimate(q, QuantileBand(1.0, 0.0, 2.0)),))
    assert MedianRecord.from_json(record.to_json()).quantiles[0].q == q


def test_distinct_quantiles_keep_distinct_keys() -> None:
    estimates = (QuantileEstimate(0.9999999, QuantileBand(1.0, 1.0, 1.0)), QuantileEstimate(1.0, QuantileBand(2, 2, 2)))
    record = dataclasses.replace(RECORD, quantiles=estimates)
    assert len(orjson.loads(record.to_json())["quantiles"]) == 2


# --- DeadLetter -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "letter",
    [
        DeadLetter("malformed_json", "unexpected character", "numbers", 3, 12345, b"\xff\x00not json"),
        DeadLetter("empty", "empty message value", "numbers", 0, 0, None),
        DeadLetter(
            "partial_batch", "2 of 3", "numbers", 7, 9, b'[1,"a",[2]]', ((1, "not_a_number"), (2, "nested_array"))
        ),
    ],
)
def test_dead_letter_round_trips_through_json(letter: DeadLetter) -> None:
    assert DeadLetter.from_json(letter.to_json()) == letter


def test_dead_letter_json_carries_source_and_base64_value() -> None:
    letter = DeadLetter("partial_batch", "d", "numbers", 7, 9, b"\x00\xff", ((1, "non_finite"),))
    body = orjson.loads(letter.to_json())
    assert body["v"] == 1
    assert body["source"] == {"topic": "numbers", "partition": 7, "offset": 9}
    assert base64.b64decode(body["value_b64"]) == b"\x00\xff"
    assert body["bad_elements"] == [{"index": 1, "reason": "non_finite"}]
    assert orjson.loads(dataclasses.replace(letter, value=None).to_json())["value_b64"] is None


def test_dead_letter_of_an_unknown_version_is_refused() -> None:
    body = orjson.loads(DeadLetter("empty", "", "numbers", 0, 0, None).to_json())
    body["v"] = 2
    with pytest.raises(ValueError, match="unsupported dead letter version"):
        DeadLetter.from_json(orjson.dumps(body))
