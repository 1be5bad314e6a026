"""The ``sketches`` topic contract: keys, the newer-than rule, and the one acceptance check of every reader."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.merge import GlobalEstimator
from pipeline.core.sketch import ShardState
from pipeline.core.sketches_contract import (
    SnapshotLimits,
    Tombstone,
    accept,
    newer_than,
    parse_key,
    progress_key,
    shard_key,
)
from pipeline.core.wire import ShardProgress, SketchSnapshot, SnapshotError
from pipeline.kafka.sketches_log import SketchesLog, _apply

FAST = settings(max_examples=200, deadline=None, database=None)
LIMITS = SnapshotLimits(shards=8)


def snapshot_of(shard: int, last_offset: int = 99, loc: float = 0.0, count: int = 500) -> SketchSnapshot:
    state = ShardState.empty(shard, 200)
    state.apply(np.random.default_rng(shard).normal(loc, 1.0, count), last_offset)
    return SketchSnapshot.from_state(state, ts=1_700_000_000_000 + last_offset)


def reason(key: bytes | None, value: bytes | None, limits: SnapshotLimits = LIMITS) -> str | None:
    try:
        accept(key, value, limits)
    except SnapshotError as exc:
        return exc.reason
    return None


# --- keys -----------------------------------------------------------------------------------------


def test_keys_are_the_shard_id_in_decimal_and_its_progress_key() -> None:
    assert shard_key(0) == b"0"
    assert shard_key(9_999) == b"9999"
    assert progress_key(3) == b"3.progress"


@given(st.integers(min_value=0, max_value=10**18))
@FAST
def test_keys_parse_back_to_their_shard_and_kind(shard: int) -> None:
    assert parse_key(shard_key(shard)) == (shard, False)
    assert parse_key(progress_key(shard)) == (shard, True)


NOT_KEYS = [None, b"", b"-1", b"+1", b" 1", b"1 ", b"01", b"1.5", b"x", b".progress", b"01.progress",
            b"1.progress.progress", b"1.Progress", b"\xff", b"9" * 20, "١".encode()]  # fmt: skip


@pytest.mark.parametrize("key", NOT_KEYS)
def test_a_key_that_no_writer_writes_names_no_shard(key: bytes | None) -> None:
    with pytest.raises(SnapshotError) as caught:
        parse_key(key)
    assert caught.value.reason == "bad_key"


# --- the newer-than rule ---------------------------------------------------------------------------


def test_a_higher_offset_is_newer_and_an_equal_state_is_not() -> None:
    old, new = snapshot_of(1, last_offset=10), snapshot_of(1, last_offset=11)
    assert newer_than(new, old)
    assert not newer_than(old, new)
    assert not newer_than(old, old)
    assert not newer_than(old, dataclasses.replace(old, ts=old.ts + 1))  # a resend of the same state
    assert newer_than(old, None)


def test_at_equal_offsets_the_larger_count_is_newer() -> None:
    small = snapshot_of(1, last_offset=10, count=100)
    large = dataclasses.replace(snapshot_of(1, last_offset=10, count=200), last_offset=10)
    assert newer_than(large, small)
    assert not newer_than(small, large)


@given(st.tuples(st.integers(-1, 50), st.integers(0, 5)), st.tuples(st.integers(-1, 50), st.integers(0, 5)))
@FAST
def test_of_two_states_exactly_one_is_newer_unless_they_are_equal(a: tuple[int, int], b: tuple[int, int]) -> None:
    base = snapshot_of(2)
    first = dataclasses.replace(base, last_offset=a[0], n=a[1])
    second = dataclasses.replace(base, last_offset=b[0], n=b[1])
    assert newer_than(first, second) + newer_than(second, first) == (0 if a == b else 1)


def test_the_estimator_takes_exactly_what_the_rule_calls_newer() -> None:
    estimator = GlobalEstimator(200, (0.5,))
    old, new = snapshot_of(4, last_offset=10), snapshot_of(4, last_offset=20, loc=3.0)
    assert estimator.offer(new)
    assert not estimator.offer(old)
    assert not estimator.offer(dataclasses.replace(new, ts=new.ts + 5))
    assert [s.last_offset for s in estimator.shards()] == [20]


# --- acceptance ------------------------------------------------------------------------------------


def test_a_genuine_snapshot_and_heartbeat_are_accepted_under_their_keys() -> None:
    snapshot = snapshot_of(3)
    progress = ShardProgress(3, snapshot.n, snapshot.n + 7, 120, snapshot.ts)
    assert accept(b"3", snapshot.to_bytes(), LIMITS) == snapshot
    assert accept(b"3.progress", progress.to_bytes(), LIMITS) == progress


@pytest.mark.parametrize("key", [b"4", b"3.progress", b"03", None, b"garbage"])
def test_a_snapshot_under_any_other_key_is_a_key_mismatch(key: bytes | None) -> None:
    assert reason(key, snapshot_of(3).to_bytes()) == "key_mismatch"


@pytest.mark.parametrize("key", [b"3", b"4.progress", None])
def test_a_heartbeat_under_any_other_key_is_a_key_mismatch(key: bytes | None) -> None:
    assert reason(key, ShardProgress(3, 0, 5, 10, 1).to_bytes()) == "key_mismatch"


def test_the_context_checks_run_after_the_key_check() -> None:
    # Shard 9 of 8: well formed and under its own key, and still refused.
    assert reason(b"9", snapshot_of(9).to_bytes()) == "unknown_shard"
    assert reason(b"9", snapshot_of(9).to_bytes(), SnapshotLimits(shards=10)) is None
    assert reason(b"9.progress", ShardProgress(9, 0, 5, 10, 1).to_bytes()) == "unknown_shard"
    # A heartbeat claiming more numbers than 11 records of 64 bytes can carry.
    assert reason(b"1.progress", ShardProgress(1, 0, 10**6, 10, 1).to_bytes(), SnapshotLimits(8, 64)) == (
        "implausible_count"
    )


def test_unreadable_bytes_keep_the_wire_formats_reason() -> None:
    assert reason(b"3", b"DMSK" + b"\x00" * 3) == "truncated"
    assert reason(b"3", b"nonsense bytes here") == "bad_magic"


def test_tombstones_name_a_shard_and_their_kind() -> None:
    assert accept(b"5", None, LIMITS) == Tombstone(5, progress=False)
    assert accept(b"5.progress", None, LIMITS) == Tombstone(5, progress=True)
    assert reason(b"5x", None) == "bad_key"
    assert reason(None, None) == "bad_key"
    assert reason(b"8", None) == "unknown_shard"


# --- the rebuild applies the same contract ---------------------------------------------------------


def test_the_rebuild_refuses_what_the_agent_refuses_a_forged_key_included() -> None:
    genuine = snapshot_of(0, last_offset=10)
    # A self-consistent snapshot of shard 0, further on, replayed under shard 1's key.
    forged = snapshot_of(0, last_offset=500, loc=100.0)
    log = SketchesLog()
    records = [(b"0", genuine.to_bytes()), (b"1", forged.to_bytes()), (b"0.progress", forged.to_bytes())]
    for offset, (key, value) in enumerate(records):
        _apply(offset, key, value, log, LIMITS)
    assert log.snapshots == {0: genuine}
    assert log.unreadable == 2
    # The agent dead-letters what the rebuild refused, by offset, with the rebuild's reason.
    assert {offset: exc.reason for offset, exc in log.refused.items()} == {1: "key_mismatch", 2: "key_mismatch"}
    assert [reason(key, value) for key, value in records] == [None, "key_mismatch", "key_mismatch"]


def test_the_rebuild_keeps_the_newest_state_and_honours_tombstones() -> None:
    old, new = snapshot_of(2, last_offset=10), snapshot_of(2, last_offset=20)
    resent = dataclasses.replace(new, ts=new.ts + 1000)  # the same state, later: its ts is the fresher sign
    log = SketchesLog()
    for key, value in [(b"2", new.to_bytes()), (b"2", old.to_bytes()), (b"2", resent.to_bytes())]:
        _apply(0, key, value, log, LIMITS)
    assert log.snapshots == {2: resent}
    _apply(3, b"2.progress", ShardProgress(2, new.n, new.n + 3, 25, 1).to_bytes(), log, LIMITS)
    assert set(log.progress) == {2}
    _apply(4, b"2.progress", None, log, LIMITS)
    assert (set(log.snapshots), set(log.progress)) == ({2}, set())
    _apply(5, b"2", None, log, LIMITS)
    assert log.snapshots == {}
    assert log.unreadable == 0
