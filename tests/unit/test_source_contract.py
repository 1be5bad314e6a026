"""Edge shards' messages, keys, names and the aggregator's ledger of them (pure: no Kafka)."""

from __future__ import annotations

import dataclasses
import math

import datasketches
import numpy as np
import pytest

from pipeline.core.sketches_contract import SnapshotLimits, Tombstone, accept
from pipeline.core.source_contract import (
    SourceBook,
    SourcePolicy,
    SourceTombstone,
    accept_source,
    check_source_name,
    source_key,
    source_progress_key,
)
from pipeline.core.source_wire import SourceProgress, SourceSnapshot, parse_source_value
from pipeline.core.wire import SketchSnapshot, SnapshotError

NOW = 1_800_000_000_000
POLICY = SourcePolicy()


def snapshot(name: str = "web-1", seq: int = 1, count: int = 1_000, k: int = 200, ts: int = NOW) -> SourceSnapshot:
    sketch = datasketches.kll_doubles_sketch(k)
    sketch.update(np.random.default_rng(seq).normal(0.0, 1.0, count))
    return SourceSnapshot.of_sketch(name, seq, sketch, ts)


def refusal(key: bytes, value: bytes | None, policy: SourcePolicy = POLICY) -> str:
    with pytest.raises(SnapshotError) as info:
        accept_source(key, value, policy)
    return info.value.reason


# --- wire ---------------------------------------------------------------------------------------


def test_a_source_snapshot_round_trips_and_is_checked_like_a_shards() -> None:
    original = dataclasses.replace(snapshot(), urgent=True, rejected=3)
    assert parse_source_value(original.to_bytes()) == original
    empty = SourceSnapshot.of_sketch("idle", 1, datasketches.kll_doubles_sketch(200), NOW)
    parsed = parse_source_value(empty.to_bytes())
    assert isinstance(parsed, SourceSnapshot)
    assert (parsed.n, parsed.seq, parsed.sketch_bytes) == (0, 1, empty.sketch_bytes)
    assert math.isnan(parsed.median.value)
    assert math.isnan(parsed.min)


def test_a_source_heartbeat_round_trips() -> None:
    beat = SourceProgress("web-1", 4, 1_000, 1_250, NOW)
    assert parse_source_value(beat.to_bytes()) == beat
    assert beat.pending == 250


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (lambda s: dataclasses.replace(s, n=s.n + 1), "inconsistent"),
        (lambda s: dataclasses.replace(s, min=s.min - 1.0), "inconsistent"),
        (lambda s: dataclasses.replace(s, median=dataclasses.replace(s.median, value=1e9)), "inconsistent"),
        (lambda s: dataclasses.replace(s, sketch_bytes=s.sketch_bytes[:-8]), "bad_sketch"),
        (lambda s: dataclasses.replace(s, seq=0), "bad_header"),
        (lambda s: dataclasses.replace(s, rank_error=2.0), "bad_header"),
    ],
)
def test_a_forged_source_snapshot_is_refused_with_its_reason(forge, reason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SnapshotError) as info:
        parse_source_value(forge(snapshot()).to_bytes())
    assert info.value.reason == reason


def test_a_shards_snapshot_is_not_an_edge_shards() -> None:
    sketch = snapshot()
    shard = SketchSnapshot(0, sketch.n, sketch.min, sketch.max, sketch.median, sketch.rank_error, 10, 200, NOW, 0,
                           sketch.sketch_bytes)  # fmt: skip
    assert refusal(source_key("web-1"), shard.to_bytes()) == "bad_header"


# --- keys and names -----------------------------------------------------------------------------


def test_edge_keys_never_collide_with_partition_shards_keys() -> None:
    limits = SnapshotLimits(shards=8)
    good = snapshot("7")  # an all-digit source id is a source, not shard 7
    assert accept(source_key("7"), good.to_bytes(), limits) == good
    assert accept(b"7", None, limits) == Tombstone(7, False)
    assert accept(source_key("7"), None, limits) == SourceTombstone("7", False)
    assert accept(source_progress_key("7"), None, limits) == SourceTombstone("7", True)


@pytest.mark.parametrize("name", ["web-1", "a", "A_b-9", "x" * 64, "svc@lx2k3abc", "7"])
def test_good_names(name: str) -> None:
    assert check_source_name(name) == name


@pytest.mark.parametrize("name", ["", "a.b", "a/b", "x" * 65, "svc@UPPER", "svc@", "@run", "a b", "é", "a@b@c"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(SnapshotError) as info:
        check_source_name(name)
    assert info.value.reason == "bad_source_id"


def test_the_operators_pattern_narrows_the_ids_not_the_run_tokens() -> None:
    assert check_source_name("web-1@abc", r"web-[0-9]+") == "web-1@abc"
    with pytest.raises(SnapshotError, match="source_id_pattern"):
        check_source_name("db-1", r"web-[0-9]+")


def test_a_key_that_does_not_name_the_messages_source_is_refused() -> None:
    assert refusal(source_key("web-2"), snapshot("web-1").to_bytes()) == "key_mismatch"
    beat = SourceProgress("web-1", 1, 10, 10, NOW).to_bytes()
    assert refusal(source_key("web-1"), beat) == "key_mismatch"  # a heartbeat under the snapshot key
    assert refusal(source_progress_key("web-1"), snapshot("web-1").to_bytes()) == "key_mismatch"
    assert refusal(b"edge/\xff", None) == "bad_source_id"


def test_the_policys_limits_on_a_snapshot() -> None:
    assert refusal(source_key("web-1"), snapshot(k=100).to_bytes()) == "k_too_small"
    small = dataclasses.replace(POLICY, max_sketch_bytes=1024)
    assert refusal(source_key("web-1"), snapshot(count=100_000).to_bytes(), small) == "oversized"
    sketch = datasketches.kll_doubles_sketch(200)
    sketch.update(np.array([1.0, math.inf]))
    infinite = SourceSnapshot.of_sketch("web-1", 1, sketch, NOW).to_bytes()
    assert refusal(source_key("web-1"), infinite) == "non_finite"
    assert isinstance(accept_source(source_key("web-1"), infinite, dataclasses.replace(POLICY, accept_infinity=True)),
                      SourceSnapshot)  # fmt: skip


# --- the ledger ---------------------------------------------------------------------------------


def admit_reason(book: SourceBook, message: SourceSnapshot | SourceProgress, now_ms: int = NOW) -> str:
    with pytest.raises(SnapshotError) as info:
        book.admit(message, now_ms)
    return info.value.reason


def test_sequence_numbers_order_a_sources_snapshots() -> None:
    book = SourceBook(POLICY)
    first, second = snapshot(seq=1), snapshot(seq=2, count=2_000, ts=NOW + 1_000)
    assert book.admit(first, NOW) is True
    assert book.admit(second, NOW) is True
    assert book.admit(second, NOW) is False  # the same snapshot again: a no-op, not an error
    assert admit_reason(book, first) == "seq_regressed"
    assert admit_reason(book, dataclasses.replace(snapshot(seq=2, count=5), ts=NOW + 2_000)) == "seq_reused"
    assert admit_reason(book, SourceProgress("web-1", 1, 1_000, 1_000, NOW + 3_000)) == "seq_regressed"
    assert book.seq("web-1") == 2


def test_a_refused_message_changes_nothing_in_the_ledger() -> None:
    book = SourceBook(dataclasses.replace(POLICY, burst=2, messages_per_s=1.0))
    book.admit(snapshot(seq=1), NOW)
    before = (book.seq("web-1"), book.pending(), book.heard_ms("web-1"))
    for bad in (snapshot(seq=1, count=7), dataclasses.replace(snapshot(seq=5), ts=NOW + 10**9)):
        with pytest.raises(SnapshotError):
            book.admit(bad, NOW + 500)
    assert (book.seq("web-1"), book.pending(), book.heard_ms("web-1")) == before


def test_the_rate_is_counted_by_send_times_and_the_clock_cannot_run_ahead() -> None:
    book = SourceBook(dataclasses.replace(POLICY, burst=3, messages_per_s=1.0, max_clock_ahead_ms=60_000))
    for seq in range(1, 4):
        assert book.admit(snapshot(seq=seq, count=seq, ts=NOW), NOW)
    assert admit_reason(book, snapshot(seq=4, count=4, ts=NOW + 500)) == "over_rate"
    assert book.admit(snapshot(seq=4, count=4, ts=NOW + 1_000), NOW)  # a second later: one more token
    # A forged clock buys at most max_clock_ahead_ms of tokens, and no more once refused.
    assert admit_reason(book, snapshot(seq=5, count=5, ts=NOW + 10**7)) == "clock_ahead"
    assert book.admit(snapshot(seq=5, count=5, ts=NOW + 60_000), NOW)


def test_the_cap_refuses_new_sources_only() -> None:
    book = SourceBook(dataclasses.replace(POLICY, max_sources=2))
    assert book.admit(snapshot("a"), NOW)
    assert book.admit(snapshot("b"), NOW)
    assert admit_reason(book, snapshot("c")) == "over_source_cap"
    assert book.admit(snapshot("a", seq=2, count=5, ts=NOW + 1_000), NOW)  # a held source goes on
    assert book.retire("b")
    assert book.admit(snapshot("c"), NOW)


def test_pending_and_staleness() -> None:
    book = SourceBook(POLICY)
    book.admit(snapshot("a", count=1_000), NOW)
    book.admit(SourceProgress("a", 1, 1_000, 1_400, NOW + 1), NOW + 5_000)
    book.admit(snapshot("b", count=10), NOW - 50_000, heard_ms=NOW - 50_000)
    assert book.pending() == 400
    assert book.stale(NOW + 10_000, 20_000) == ["b"]
