"""When a shard or the aggregator sends: at most once per interval, and only on change."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from pipeline.core.emission import EmissionState, IntervalRule

RULE = IntervalRule(interval_ms=200)
NOW = 1_700_000_000_000


def test_fresh_state_has_nothing_to_send() -> None:
    state = EmissionState()
    assert not state.changed
    assert not RULE.should_emit(state, NOW)


def test_a_change_is_sent_once_the_interval_has_passed() -> None:
    state = EmissionState(last_emit_ms=NOW, emitted_version=5, version=6)
    assert state.changed
    assert not RULE.should_emit(state, NOW + 199)
    assert RULE.should_emit(state, NOW + 200)
    assert RULE.should_emit(state, NOW + 10_000)


@pytest.mark.parametrize("later", [0, 200, 10**9])
def test_nothing_is_sent_without_a_change(later: int) -> None:
    state = EmissionState(last_emit_ms=NOW, emitted_version=6, version=6)
    assert not RULE.should_emit(state, NOW + later)


def test_never_emitted_state_with_data_is_sent_at_once() -> None:
    state = EmissionState(version=0)
    assert RULE.should_emit(state, NOW)


def test_mark_emitted_records_time_and_version() -> None:
    state = EmissionState(last_emit_ms=NOW, emitted_version=1, version=4)
    state.mark_emitted(NOW + 500)
    assert (state.last_emit_ms, state.emitted_version, state.version) == (NOW + 500, 4, 4)
    assert not state.changed
    assert not RULE.should_emit(state, NOW + 5_000)


def test_after_an_emission_the_next_change_waits_for_the_interval() -> None:
    state = EmissionState(version=1)
    state.mark_emitted(NOW)
    state.version = 2
    assert not RULE.should_emit(state, NOW + 50)
    assert RULE.should_emit(state, NOW + 200)
    state.mark_emitted(NOW + 200)
    assert not RULE.should_emit(state, NOW + 400)


def test_interval_rule_is_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        RULE.interval_ms = 5  # type: ignore[misc]


def test_observe_records_count_version_and_when_they_last_changed() -> None:
    state = EmissionState()
    state.observe(10, 3, now_ms=NOW)
    state.observe(10, 3, now_ms=NOW + 500)  # nothing new: the change time stays
    assert (state.n, state.version, state.last_change_ms) == (10, 3, NOW)
    state.observe(12, 4, now_ms=NOW + 600)
    assert (state.n, state.version, state.last_change_ms) == (12, 4, NOW + 600)


def test_mark_emitted_and_heartbeat_record_what_was_sent() -> None:
    state = EmissionState()
    state.observe(7, 2, now_ms=NOW)
    assert state.emitted_n == -1  # a new shard has sent nothing yet
    state.mark_emitted(NOW + 1)
    assert (state.emitted_n, state.emitted_version, state.last_emit_ms, state.last_signal_ms) == (
        7,
        2,
        NOW + 1,
        NOW + 1,
    )
    state.mark_heartbeat(NOW + 9)
    assert (state.last_emit_ms, state.last_signal_ms) == (NOW + 1, NOW + 9)
