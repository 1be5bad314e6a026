"""The aggregator's view of the shards' progress: pending numbers and silent shards, at a cost that follows change."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import deadlines
from pipeline.core.liveness import ShardLiveness
from pipeline.core.sketch import ShardState
from pipeline.core.wire import ShardProgress, SketchSnapshot

FAST = settings(max_examples=300, deadline=None, database=None)


def snapshot(shard: int, values: npt.NDArray[np.float64], offset: int, ts: int) -> SketchSnapshot:
    state = ShardState.empty(shard, 200)
    state.apply(values, offset)
    return SketchSnapshot.from_state(state, ts)


def test_pending_is_kept_as_messages_arrive_and_stale_shards_stay_listed_until_heard_from() -> None:
    liveness = ShardLiveness()
    liveness.note_snapshot(snapshot(0, np.arange(100.0), offset=10, ts=1_000))
    liveness.note_progress(ShardProgress(0, 100, 180, 14, ts=2_000))
    liveness.note_progress(ShardProgress(1, 0, 30, 2, ts=2_000))
    assert liveness.pending() == 110
    assert liveness.stale(now_ms=9_000, max_age_ms=5_000) == [0, 1]
    assert liveness.stale(now_ms=9_000, max_age_ms=5_000) == [0, 1]  # asking again finds them again
    assert liveness.stale(now_ms=9_000, max_age_ms=8_000) == []  # a longer age: none
    liveness.forget(1)
    liveness.forget(1)  # twice: nothing more to drop
    assert liveness.pending() == 80
    assert liveness.stale(now_ms=9_000, max_age_ms=5_000) == [0]


def test_a_publish_while_every_shard_stays_stale_moves_none_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stopped worker's 10,000 shards go stale once; until they are heard from, a
    # publish's count must not re-file them (it did: every publish, every stale shard).
    filed: list[int] = []
    real_set = deadlines.Deadlines.set

    def counting_set(self: deadlines.Deadlines, key: int, at_ms: int | None) -> None:
        filed.append(key)
        real_set(self, key, at_ms)

    monkeypatch.setattr(deadlines.Deadlines, "set", counting_set)
    liveness = ShardLiveness()
    for shard in range(10_000):
        liveness.note_progress(ShardProgress(shard, 0, 10, 1, ts=1_000 + shard % 7))
    filed.clear()
    assert liveness.stale_count(now_ms=20_000, max_age_ms=4_000) == 10_000
    assert len(filed) == 10_000  # each moved once, into the stale part
    filed.clear()
    for now_ms in range(20_200, 22_000, 200):
        assert liveness.stale_count(now_ms, max_age_ms=4_000) == 10_000
    assert filed == []
    liveness.note_progress(ShardProgress(42, 0, 11, 2, ts=21_000))  # heard from again
    liveness.note_progress(ShardProgress(43, 0, 11, 2, ts=900))  # an older message: still stale
    assert liveness.stale_count(now_ms=22_000, max_age_ms=4_000) == 9_999
    assert filed == [42]
    assert liveness.stale(now_ms=22_000, max_age_ms=4_000) == [s for s in range(10_000) if s != 42]
    assert liveness.stale_count(now_ms=26_000, max_age_ms=4_000) == 10_000  # 42 silent again


def test_a_shard_heard_from_again_is_no_longer_stale_and_an_older_message_does_not_age_it() -> None:
    liveness = ShardLiveness()
    liveness.note_progress(ShardProgress(3, 0, 10, 1, ts=1_000))
    assert liveness.stale(now_ms=10_000, max_age_ms=2_000) == [3]
    liveness.note_progress(ShardProgress(3, 0, 20, 2, ts=9_000))
    assert liveness.stale(now_ms=10_000, max_age_ms=2_000) == []
    liveness.note_progress(ShardProgress(3, 0, 15, 1, ts=2_000))  # a late, older one
    assert liveness.stale(now_ms=10_000, max_age_ms=2_000) == []
    assert liveness.stale(now_ms=11_001, max_age_ms=2_000) == [3]  # older than max_age, strictly


# A snapshot's shard applied at least one record (offset >= 0); a heartbeat may come before any.
_message = st.tuples(
    st.booleans(), st.integers(0, 6), st.integers(0, 500), st.integers(-1, 50), st.integers(0, 20_000)
).map(lambda m: (m[0], m[1], m[2], max(m[3], 0) if m[0] else m[3], m[4]))


_question = st.tuples(st.integers(0, 30_000), st.integers(0, 8_000), st.booleans())

# A step: a shard to forget, a question (now_ms, max_age_ms, count_only), or a message
# (is_snapshot, shard, n, offset, ts).
Step = int | tuple[int, int, bool] | tuple[bool, int, int, int, int]


@FAST
@given(st.lists(st.one_of(_message, st.integers(0, 6), _question)))
def test_matches_a_scan_of_every_shard(steps: list[Step]) -> None:
    liveness = ShardLiveness()
    notes: dict[int, list[int]] = {}  # shard: [reflected_n, reflected_offset, ingested, ingested_offset, last_seen]
    for step in steps:
        if isinstance(step, int):
            liveness.forget(step)
            notes.pop(step, None)
        elif len(step) == 3:
            now_ms, max_age_ms, count_only = step
            expected = sorted(shard for shard, note in notes.items() if now_ms - note[4] > max_age_ms)
            # Either question moves the shards across the cutoff; a later one must start from that.
            if count_only:
                assert liveness.stale_count(now_ms, max_age_ms) == len(expected)
            else:
                assert liveness.stale(now_ms, max_age_ms) == expected
        else:
            is_snapshot, shard, n, offset, ts = step
            note = notes.setdefault(shard, [0, -1, 0, -1, 0])
            if is_snapshot:
                liveness.note_snapshot(snapshot(shard, np.arange(float(n)), offset, ts))
                if offset >= note[1]:
                    note[0], note[1] = n, offset
                if offset >= note[3]:
                    note[2], note[3] = n, offset
            else:
                liveness.note_progress(ShardProgress(shard, 0, n, offset, ts))
                if offset >= note[3]:
                    note[2], note[3] = n, offset
            note[4] = max(note[4], ts)
        assert liveness.pending() == sum(max(note[2] - note[0], 0) for note in notes.values())
