"""The aggregator's step against hostile edge shards: no crash, every refusal counted, no record changed by one."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import datasketches
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.aggregation import AggregateState
from pipeline.core.sketch import ShardState
from pipeline.core.sketches_contract import SnapshotLimits
from pipeline.core.source_contract import SourcePolicy, source_key, source_progress_key
from pipeline.core.source_wire import SourceProgress, SourceSnapshot, parse_source_value
from pipeline.core.wire import SketchSnapshot, SnapshotError

NOW = 1_800_000_000_000
LIMITS = SnapshotLimits(shards=4)
POLICY = SourcePolicy(max_sources=3, burst=2, messages_per_s=0.5)
STALE_AFTER_MS = 20_000
NAMES = ("web-1", "web-2", "db-1", "job-7", "web-1@lx2k3abc")
KEYS = [source_key(n) for n in NAMES] + [source_progress_key(n) for n in NAMES] + [b"0", b"3", b"9", b"edge/", None]


@functools.cache
def _sketch_bytes(seed: int, count: int, k: int) -> bytes:
    # Kept: a KLL sketch compacts at random, and hypothesis needs the same bytes for the same draws.
    sketch = datasketches.kll_doubles_sketch(k)
    sketch.update(np.random.default_rng(seed).normal(seed % 5, 1.0, count))
    return bytes(sketch.serialize())


def _sketch(seed: int, count: int, k: int = 200) -> datasketches.kll_doubles_sketch:
    return datasketches.kll_doubles_sketch.deserialize(_sketch_bytes(seed, count, k))


def _state() -> AggregateState:
    state = AggregateState.empty(200, (0.5, 0.9, 0.99), POLICY)
    shard = ShardState.empty(0, 200)
    shard.apply(np.random.default_rng(0).normal(0.0, 1.0, 3_000), 10)
    state.take(b"0", SketchSnapshot.from_state(shard, NOW).to_bytes(), LIMITS, NOW)
    for name, seq in (("web-1", 3), ("web-2", 1)):
        edge = SourceSnapshot.of_sketch(name, seq, _sketch(seq, 2_000), NOW)
        state.take(source_key(name), edge.to_bytes(), LIMITS, NOW)
    return state


def _record(state: AggregateState) -> bytes:
    return state.record(NOW, 0.005, STALE_AFTER_MS).to_json()


def _ledger(state: AggregateState) -> object:
    return state.sources.notes()  # every field of every edge shard: sequence number, counts, tokens, times


# A header field an edge shard might forge, and how to write it into a snapshot.
_FORGERIES: dict[str, Callable[[SourceSnapshot, int], SourceSnapshot]] = {
    "n": lambda snapshot, value: dataclasses.replace(snapshot, n=value),
    "min": lambda snapshot, value: dataclasses.replace(snapshot, min=value),
    "rank_error": lambda snapshot, value: dataclasses.replace(snapshot, rank_error=value),
    "rejected": lambda snapshot, value: dataclasses.replace(snapshot, rejected=value),
    "seq": lambda snapshot, value: dataclasses.replace(snapshot, seq=value),
}


@st.composite
def _message(draw: st.DrawFn) -> tuple[bytes | None, bytes | None]:
    """A record an edge shard (honest, confused or hostile) might write."""
    name = draw(st.sampled_from(NAMES))
    seq = draw(st.integers(-1, 12))
    count = draw(st.sampled_from((0, 1, 40, 700, 3_000)))
    k = draw(st.sampled_from((200, 200, 200, 200, 100, 400)))
    ts = NOW + draw(st.sampled_from((0, 100, 2_000, -100_000, 400_000)))
    kind = draw(st.sampled_from(("snapshot",) * 6 + ("progress", "progress", "tombstone", "garbage")))
    if kind == "garbage":
        value: bytes | None = draw(st.binary(max_size=300))
    elif kind == "tombstone":
        value = None
    elif kind == "progress":
        value = SourceProgress(name, max(seq, 0), count, count + draw(st.integers(-5, 500)), ts).to_bytes()
    else:
        snapshot = SourceSnapshot.of_sketch(name, max(seq, 1), _sketch(seq % 3, count, k), ts)
        if draw(st.integers(0, 3)) == 0:  # a forged header field
            forge = _FORGERIES[draw(st.sampled_from(tuple(_FORGERIES)))]
            snapshot = forge(snapshot, draw(st.integers(-3, 10_000)))
        value = snapshot.to_bytes()
    if value is not None and draw(st.integers(0, 3)) == 0:  # damaged on the way: cut, or bytes flipped
        data = bytearray(value)
        if data and draw(st.booleans()):
            del data[draw(st.integers(0, len(data) - 1)) :]
        for _ in range(draw(st.integers(0, 3))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        value = bytes(data)
    honest_key = source_progress_key(name) if kind == "progress" else source_key(name)
    key = honest_key if draw(st.integers(0, 3)) else draw(st.sampled_from(KEYS))
    return key, value


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message(), min_size=1, max_size=25), st.lists(st.integers(0, 60_000), min_size=25, max_size=25))
def test_hostile_edge_shards_never_crash_the_aggregator_or_change_a_record_by_a_refused_message(
    messages: list[tuple[bytes | None, bytes | None]], clock: list[int]
) -> None:
    state = _state()
    refused: list[str] = []
    accepted = 0
    for (key, value), step in zip(messages, sorted(clock), strict=False):  # the aggregator's clock goes forward
        now = NOW + step
        before, ledger = _record(state), _ledger(state)
        try:
            taken = state.take(key, value, LIMITS, now)
        except SnapshotError as exc:
            refused.append(exc.reason)  # the agent dead-letters it as snapshot_<reason>, and counts it
            assert _record(state) == before
            assert _ledger(state) == ledger
            # The held snapshot written back under the key (compaction keeps the last record) is a no-op.
            held = state.held_value(key)
            if held is not None:
                assert not state.take(key, held, LIMITS, now).changed
                assert _record(state) == before
            continue
        accepted += 1
        if not taken.changed:
            assert state.record(NOW, 0.005, STALE_AFTER_MS).n == state.estimator.n
        # Whatever was taken, the record stays whole: n is the sum of what is held.
        held_n = sum(s.n for s in state.estimator.shards()) + sum(s.n for s in state.estimator.sources())
        assert state.estimator.n == held_n
        assert state.estimator.source_count == len([n for n in NAMES if state.sources.seq(n) > 0])
    assert all(refused)  # every refusal has a reason
    assert len(refused) + accepted == len(messages[: len(clock)])


def test_an_honest_source_goes_through_with_replays_as_no_ops() -> None:
    state = _state()
    messages = [SourceSnapshot.of_sketch("db-1", seq, _sketch(seq, 500 * seq), NOW + seq * 1_000) for seq in (1, 2, 3)]
    for message in messages:
        assert state.take(source_key("db-1"), message.to_bytes(), LIMITS, NOW).changed
    # Replayed (a producer's retry, a restart): the same seq is a no-op, older ones are refused.
    assert not state.take(source_key("db-1"), messages[-1].to_bytes(), LIMITS, NOW).changed
    for message in messages[:-1]:
        with pytest.raises(SnapshotError, match="seq_regressed"):
            state.take(source_key("db-1"), message.to_bytes(), LIMITS, NOW)
    assert state.estimator.n == 3_000 + 2 * 2_000 + 1_500
    assert state.take(source_key("db-1"), None, LIMITS, NOW).changed  # retired
    assert state.estimator.n == 7_000


def test_after_a_refusal_under_a_held_edge_key_the_held_snapshot_is_written_back() -> None:
    state = _state()
    held = state.estimator.source("web-1")
    assert held is not None
    for refused in (b"garbage", SourceSnapshot.of_sketch("web-1", 2, _sketch(2, 100), NOW).to_bytes()):
        with pytest.raises(SnapshotError):
            state.take(source_key("web-1"), refused, LIMITS, NOW)
        restore = state.held_value(source_key("web-1"))
        assert restore is not None
        assert parse_source_value(restore) == held
    assert state.held_value(source_progress_key("web-1")) is None  # heartbeats need no restoring
    assert state.held_value(source_key("db-1")) is None  # nothing held
    assert state.held_value(b"0") is None  # partition shards' keys: the workers' own (ACLs)
