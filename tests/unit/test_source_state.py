"""A source's own state: adding, when it sends, how it numbers snapshots across a restart (pure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.core.budget import GlobalView
from pipeline.core.source_contract import SourceBook, SourcePolicy
from pipeline.core.source_state import RateBucket, SourceOptions, SourceState
from pipeline.core.source_wire import SourceProgress, SourceSnapshot
from pipeline.core.wire import SnapshotError

NOW = 1_800_000_000_000


def test_add_and_add_many_sketch_every_number_and_count_the_refused() -> None:
    state = SourceState("web-1")
    for x in range(1_000):
        state.add(float(x))
    state.add_many(np.array([1.0, math.nan, math.inf, -math.inf, 2.0]))
    state.add("not a number")  # type: ignore[arg-type]  # a caller's mistake: counted, not raised later
    state.drain()
    assert (state.n, state.rejected) == (1_002, 4)
    assert state.sketch.get_max_value() == 999.0


def test_infinities_are_sketched_when_accepted() -> None:
    state = SourceState("web-1", SourceOptions(accept_infinity=True))
    state.add_many([1.0, math.inf, math.nan])
    assert (state.n, state.rejected) == (2, 1)


def test_the_caller_may_reuse_its_array_after_add_many() -> None:
    state = SourceState("web-1")
    buffer = np.arange(100, dtype=np.float64)
    state.add_many(buffer)
    buffer[:] = 1e9  # the budget keeps the numbers uncounted until a check: it must hold its own copy
    message = state.next_message(NOW)
    assert isinstance(message, SourceSnapshot)
    assert message.max == 99.0


def test_the_first_numbers_go_at_once_then_the_rule_decides() -> None:
    state = SourceState("web-1", SourceOptions(idle_ms=1_000, growth=4.0))
    assert state.next_message(NOW) is None  # nothing added yet
    state.add_many(np.ones(100))
    first = state.next_message(NOW)
    assert isinstance(first, SourceSnapshot)
    assert (first.seq, first.n, first.source) == (1, 100, "web-1")
    state.add_many(np.ones(100))
    assert state.next_message(NOW + 10) is None  # not grown 4x, no record to spend a budget against
    state.add_many(np.ones(200))
    grown = state.next_message(NOW + 20)
    assert isinstance(grown, SourceSnapshot)
    assert (grown.seq, grown.n) == (2, 400)
    state.add_many(np.ones(10))
    assert state.next_message(NOW + 30) is None
    idle = state.next_message(NOW + 30 + 1_000)  # the input paused: what is unsent goes
    assert isinstance(idle, SourceSnapshot)
    assert (idle.seq, idle.n) == (3, 410)
    beat = state.next_message(NOW + 30 + 1_000 + 10_000)
    assert beat == SourceProgress("web-1", 3, 410, 410, NOW + 11_030)


def test_the_budget_sends_when_the_unsent_numbers_could_move_a_served_quantile() -> None:
    state = SourceState("web-1", SourceOptions(growth=1e9, idle_ms=10**9))
    state.add_many(np.random.default_rng(1).normal(0.0, 1.0, 10_000))
    assert isinstance(state.next_message(NOW), SourceSnapshot)
    # The record serves a median of 0 over 10,000 numbers from this source alone.
    state.see(GlobalView((0.5,), (0.0,), 10_000, 1, 0.005, NOW))
    state.add_many(np.full(200, 5.0))  # all above the median: |B - qU| = 100 > 0.005 * (10,000 + 200)
    message = state.next_message(NOW + 1)
    assert isinstance(message, SourceSnapshot)
    assert message.urgent


def test_a_restart_resends_the_saved_snapshot_under_its_number_and_never_reuses_a_number() -> None:
    state = SourceState("job-1")
    state.add_many(np.arange(500.0))
    sent = state.next_message(NOW)
    assert isinstance(sent, SourceSnapshot)
    saved = state.to_bytes()  # saved before the send, as SketchingSource does

    book = SourceBook(SourcePolicy())
    assert book.admit(sent, NOW)
    # Restarted from the save: the same numbers go again under the same number, a no-op for the aggregator.
    again = SourceState.from_bytes(saved, SourceOptions())
    resent = again.next_message(NOW + 1)
    assert isinstance(resent, SourceSnapshot)
    assert (resent.seq, resent.n, resent.sketch_bytes) == (1, 500, sent.sketch_bytes)
    assert book.admit(resent, NOW) is False

    # Restarted, then more numbers before the first send: a number the crashed process never used.
    grown = SourceState.from_bytes(saved, SourceOptions())
    grown.add_many(np.arange(10.0))
    message = grown.next_message(NOW + 2)
    assert isinstance(message, SourceSnapshot)
    assert (message.seq, message.n) == (2, 510)
    assert book.admit(message, NOW)


def test_a_periodic_save_after_a_send_resumes_under_the_next_number() -> None:
    state = SourceState("job-1")
    state.add_many(np.arange(100.0))
    first = state.next_message(NOW)
    assert isinstance(first, SourceSnapshot)
    state.add_many(np.arange(50.0))
    saved = state.to_bytes()  # a periodic save: 150 numbers, snapshot 1 carried 100
    resumed = SourceState.from_bytes(saved, SourceOptions())
    message = resumed.next_message(NOW + 1)
    assert isinstance(message, SourceSnapshot)
    assert (message.seq, message.n) == (2, 150)


def test_a_state_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not a source state"):
        SourceState.from_bytes(b"DMSS\x01garbage", SourceOptions())


def test_the_rate_bucket_matches_the_aggregators_count() -> None:
    bucket = RateBucket(rate=2.0, burst=3)
    assert [bucket.take(NOW) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(NOW + 499) is False
    assert bucket.take(NOW + 1_000) is True
    assert bucket.ready(NOW + 1_500) is True  # a look takes nothing: both tokens are still there to take
    assert bucket.take(NOW + 1_500) is True
    assert bucket.take(NOW + 1_500) is True
    assert bucket.ready(NOW + 1_500) is False
    # What the bucket lets through, the aggregator's ledger takes (same rate, same burst, same times).
    book = SourceBook(SourcePolicy(messages_per_s=2.0, burst=3))
    state, sender = SourceState("web-9", SourceOptions(rule="interval", interval_ms=1)), RateBucket(2.0, 3)
    for step in range(40):
        state.add_many(np.ones(3))
        now = NOW + step * 100
        if sender.take(now):
            message = state.next_message(now)
            assert message is not None
            try:
                book.admit(message, now)
            except SnapshotError as exc:  # pragma: no cover - the assertion below names it
                pytest.fail(f"the aggregator refused what the source's bucket allowed: {exc}")
