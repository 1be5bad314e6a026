"""Deadlines per shard: a tick pops only the due shards, and sends exactly what looking at every shard sent."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.budget import GlobalView
from pipeline.core.deadlines import Deadlines, FlushSchedule
from pipeline.core.emission import EmissionState, RuleName, ShardEmissionRule, build_shard_rule
from pipeline.core.sketch import ShardState

FAST = settings(max_examples=40, deadline=None, database=None)
NOW = 1_700_000_000_000


# -- Deadlines ---------------------------------------------------------------------------------


def test_pops_only_the_due_keys_earliest_first() -> None:
    deadlines = Deadlines()
    for key, at_ms in [(1, 300), (2, 100), (3, 200), (4, 900)]:
        deadlines.set(key, at_ms)
    assert deadlines.pop_due(250) == [2, 3]
    assert deadlines.pop_due(250) == []
    assert len(deadlines) == 2
    assert deadlines.next_ms() == 300
    assert deadlines.pop_due(10_000) == [1, 4]


def test_a_changed_deadline_replaces_the_old_one_both_later_and_earlier() -> None:
    deadlines = Deadlines()
    deadlines.set(7, 100)
    deadlines.set(7, 500)  # later: the entry at 100 is stale and skipped
    assert deadlines.pop_due(200) == []
    assert deadlines.get(7) == 500
    deadlines.set(7, 50)  # earlier
    assert deadlines.pop_due(60) == [7]
    assert deadlines.pop_due(10_000) == []  # the entry at 500 was stale


def test_discarded_keys_never_pop_and_none_means_no_deadline() -> None:
    deadlines = Deadlines()
    deadlines.set(1, 100)
    deadlines.set(2, 100)
    deadlines.discard(1)
    deadlines.set(2, None)
    deadlines.discard(99)  # unknown: nothing to do
    assert 1 not in deadlines
    assert deadlines.pop_due(10_000) == []
    assert deadlines.next_ms() is None


def test_the_limit_leaves_the_rest_due_for_the_next_call() -> None:
    deadlines = Deadlines()
    for key in range(10):
        deadlines.set(key, 100 + key)
    assert deadlines.pop_due(1_000, limit=4) == [0, 1, 2, 3]
    assert deadlines.pop_due(1_000, limit=4) == [4, 5, 6, 7]
    assert deadlines.pop_due(1_000, limit=4) == [8, 9]


def test_the_heap_stays_within_twice_the_live_keys() -> None:
    deadlines = Deadlines()
    for step in range(10_000):
        deadlines.set(step % 10, step)  # each set moves a deadline later: a stale entry each time
    assert len(deadlines) == 10
    assert len(deadlines._heap) <= 2 * 10 + 64
    assert deadlines.pop_due(10**9) == sorted(range(10), key=lambda key: 9_990 + key)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["set", "discard", "pop"]), st.integers(0, 20), st.integers(0, 1_000))))
def test_matches_a_plain_dict_of_deadlines(operations: list[tuple[str, int, int]]) -> None:
    deadlines, model = Deadlines(), dict[int, int]()
    for operation, key, at_ms in operations:
        if operation == "set":
            deadlines.set(key, at_ms)
            model[key] = at_ms
        elif operation == "discard":
            deadlines.discard(key)
            model.pop(key, None)
        else:
            due = sorted((at, k) for k, at in model.items() if at <= at_ms)
            assert deadlines.pop_due(at_ms) == [k for _, k in due]
            for _, k in due:
                del model[k]
        assert len(deadlines) == len(model)
        assert deadlines.next_ms() == (min(model.values()) if model else None)


# -- FlushSchedule -------------------------------------------------------------------------------


def test_announcements_are_spread_over_ticks_yet_every_one_is_made() -> None:
    schedule = FlushSchedule(per_tick=300)
    for shard in range(1_000):
        schedule.assigned(shard)
    schedule.assigned(5)  # already queued: once only
    announced: list[int] = []
    for _ in range(4):
        plan = schedule.plan(NOW)
        assert len(plan.announce) <= 300
        announced.extend(plan.announce)
    assert announced == list(range(1_000))
    assert schedule.pending_announcements == 0
    assert schedule.plan(NOW).announce == ()


def test_revoked_or_already_loaded_shards_are_not_announced() -> None:
    schedule = FlushSchedule()
    for shard in (1, 2, 3, 4):
        schedule.assigned(shard)
    schedule.revoked(2)
    schedule.announced(3)  # its first batch read it first
    schedule.revoked(4)
    schedule.assigned(4)  # back again: announced once
    assert schedule.plan(NOW).announce == (1, 4)


def test_a_newer_record_rechecks_only_the_shards_with_unsent_numbers_once() -> None:
    schedule = FlushSchedule()
    schedule.touched(1, NOW + 10_000, unsent=True)
    schedule.touched(2, NOW + 10_000, unsent=False)
    schedule.touched(3, NOW + 10_000, unsent=True)
    schedule.touched(3, NOW + 10_000, unsent=False)  # it sent since
    assert schedule.plan(NOW).recheck == ()  # no newer record yet
    schedule.new_record()
    schedule.new_record()
    assert schedule.plan(NOW).recheck == (1,)
    assert schedule.plan(NOW).recheck == ()
    schedule.revoked(1)
    schedule.new_record()
    assert schedule.plan(NOW).recheck == ()


def test_rechecks_are_spread_over_ticks_first_queued_first_and_each_shard_once() -> None:
    schedule = FlushSchedule(per_tick=100, recheck_per_tick=3)
    for shard in range(10):
        schedule.touched(shard, NOW + 10_000, unsent=shard != 9)  # 9 has nothing unsent
    schedule.new_record()
    first = schedule.plan(NOW).recheck
    assert len(first) == 3
    for shard in first:
        schedule.touched(shard, NOW + 10_000, unsent=True)  # looked at, still unsent
    waiting = sorted(set(range(9)) - set(first))
    schedule.new_record()  # a newer record: the ones looked at queue again, behind the waiting ones
    schedule.new_record()  # and another: nobody is queued twice
    schedule.touched(waiting[0], NOW + 10_000, unsent=True)  # a batch checked it against the newest
    schedule.revoked(waiting[1])
    rest: list[int] = []
    for _ in range(3):
        rest.extend(schedule.plan(NOW).recheck)
    assert len(rest) == len(set(rest)) == 7
    assert set(rest[:4]) == set(waiting[2:])
    assert set(rest[4:]) == set(first)
    assert schedule.pending_rechecks == 0
    assert schedule.plan(NOW).recheck == ()


@FAST
@given(st.integers(1, 40), st.integers(1, 12), st.lists(st.integers(0, 39), max_size=60))
def test_every_shard_with_unsent_numbers_is_rechecked_within_the_bound(
    shards: int, per_tick: int, batches: list[int]
) -> None:
    # The bound the budget's argument rests on: ceil(S / recheck_per_tick) ticks after the
    # record, whatever records, batches and re-checks came in between.
    schedule = FlushSchedule(per_tick=1, recheck_per_tick=per_tick)
    for shard in range(shards):
        schedule.touched(shard, None, unsent=True)
    schedule.new_record()
    waiting = set(range(shards))
    bound = -(-shards // per_tick)
    for tick in range(bound):
        if tick < len(batches):
            shard = batches[tick] % shards
            schedule.touched(shard, None, unsent=True)  # its batch was checked against the newest
            waiting.discard(shard)
            schedule.new_record()  # and yet another record
        recheck = schedule.plan(NOW).recheck
        assert len(recheck) <= per_tick
        for shard in recheck:
            schedule.touched(shard, None, unsent=True)  # still unsent after its look
        waiting -= set(recheck)
    assert waiting == set()


def test_due_shards_pop_once_and_revoked_ones_never() -> None:
    schedule = FlushSchedule(per_tick=2)
    for shard in range(4):
        schedule.touched(shard, NOW + shard, unsent=False)
    schedule.revoked(1)
    assert schedule.plan(NOW + 100).due == (0, 2)  # at most two per tick
    assert schedule.plan(NOW + 100).due == (3,)
    assert schedule.plan(NOW + 100).due == ()
    assert schedule.deadline(0) is None  # popped: the service touches it again


def test_per_tick_must_be_positive() -> None:
    with pytest.raises(ValueError, match="per_tick"):
        FlushSchedule(per_tick=0)
    with pytest.raises(ValueError, match="recheck_per_tick"):
        FlushSchedule(per_tick=5, recheck_per_tick=0)


# -- next_due_ms: before it, time alone changes nothing ------------------------------------------


@pytest.mark.parametrize("name", ["budget", "geometric", "interval"])
@FAST
@given(st.integers(0, 5_000), st.integers(0, 5_000), st.integers(0, 5_000), st.integers(-1, 3), st.integers(-1, 3))
def test_nothing_turns_due_before_the_deadline(
    name: RuleName, last_emit: int, last_signal: int, last_change: int, version: int, emitted: int
) -> None:
    rule = build_shard_rule(name, interval_ms=200, theta=0.01, heartbeat_ms=1_000, growth=2.0, shards_hint=4)
    state = rule.new_state()
    state.last_emit_ms, state.last_signal_ms = NOW + last_emit, NOW + last_signal
    state.last_change_ms = NOW + last_change
    state.version, state.emitted_version, state.n, state.emitted_n = version, emitted, 10, 10
    due = rule.next_due_ms(state)
    assert due is not None  # every rule here heartbeats
    start = NOW + max(last_emit, last_signal, last_change)
    first = [t for t in range(start, start + 3_000, 7) if rule.should_emit(state, t) or rule.should_heartbeat(state, t)]
    # Nothing before the deadline; from a deadline at or after now, something at it.
    assert all(t >= due for t in first)
    if due >= start:
        assert rule.should_emit(state, due) or rule.should_heartbeat(state, due)


def test_an_interval_rule_without_heartbeat_has_no_deadline_with_nothing_unsent() -> None:
    rule = build_shard_rule("interval", interval_ms=200, theta=0.01, heartbeat_ms=1_000, growth=2.0, shards_hint=1)
    state = rule.new_state()
    assert rule.next_due_ms(state) == 1_000  # heartbeat after last_signal_ms = 0
    state.version = 3
    assert rule.next_due_ms(state) == 200  # the interval since last_emit_ms = 0


# -- the deadlines send what looking at every shard on every tick sent ---------------------------


@dataclass
class _Shard:
    emission: EmissionState
    state: ShardState
    """Shared by both workers: a KLL sketch compacts at random, and the budget's grid comes from it."""
    view_seen: int = -1


@dataclass
class _Worker:
    """One worker's shards, driven either the old way (every shard, every tick) or by deadlines."""

    rule: ShardEmissionRule
    lazy: bool
    shards: dict[int, _Shard] = field(default_factory=dict)
    schedule: FlushSchedule = field(default_factory=lambda: FlushSchedule(per_tick=10_000))
    records: int = 0
    view: GlobalView | None = None
    sent: list[tuple[int, int, str]] = field(default_factory=list)
    looked_at: int = 0

    def add(self, shard: int, state: ShardState) -> None:
        slot = _Shard(self.rule.new_state(), state)
        slot.emission.observe(0, -1)
        self.shards[shard] = slot
        if self.lazy:
            self.schedule.assigned(shard)  # announced on the next tick, as the service does
        else:
            slot.emission.see(self.view)

    def evaluate(self, shard: int, now_ms: int) -> None:
        slot = self.shards[shard]
        self.looked_at += 1
        if self.lazy and slot.view_seen != self.records:
            slot.emission.see(self.view)
            slot.view_seen = self.records
        if self.rule.should_emit(slot.emission, now_ms):
            slot.emission.mark_emitted(now_ms, slot.state.sketch)
            self.sent.append((now_ms, shard, "snapshot"))
        elif self.rule.should_heartbeat(slot.emission, now_ms):
            slot.emission.mark_heartbeat(now_ms)
            self.sent.append((now_ms, shard, "heartbeat"))
        self.schedule.touched(shard, self.rule.next_due_ms(slot.emission), slot.emission.changed)

    def batch(self, shard: int, values: np.ndarray, now_ms: int) -> None:
        slot = self.shards[shard]
        slot.emission.observe(slot.state.n, slot.state.last_offset, values, now_ms)
        self.evaluate(shard, now_ms)

    def record(self, view: GlobalView) -> None:
        self.records += 1
        self.view = view
        if self.lazy:
            self.schedule.new_record()
        else:
            for slot in self.shards.values():
                slot.emission.see(view)

    def tick(self, now_ms: int) -> None:
        if not self.lazy:
            for shard in self.shards:
                self.evaluate(shard, now_ms)
            return
        plan = self.schedule.plan(now_ms)
        for shard in (*plan.recheck, *plan.announce, *plan.due):
            self.evaluate(shard, now_ms)


@pytest.mark.parametrize("name", ["budget", "geometric", "interval"])
@FAST
@given(st.integers(0, 2**32 - 1))
def test_deadlines_send_the_same_messages_at_the_same_times(name: RuleName, seed: int) -> None:
    rule = build_shard_rule(name, interval_ms=200, theta=0.01, heartbeat_ms=1_000, growth=2.0, shards_hint=8)
    workers = [_Worker(rule, lazy=False), _Worker(rule, lazy=True)]
    rng = np.random.default_rng(seed)
    states = [ShardState.empty(shard, 200) for shard in range(8)]
    for worker in workers:
        for shard, state in enumerate(states):
            worker.add(shard, state)
    events: list[tuple[int, int, str]] = []
    for t in range(0, 6_000, 50):
        heapq.heappush(events, (t, 2, "tick"))
    for t in rng.integers(0, 6_000, 60):
        heapq.heappush(events, (int(t), 0, "batch"))
    for t in rng.integers(0, 6_000, 15):
        heapq.heappush(events, (int(t), 1, "record"))
    while events:
        t, _, kind = heapq.heappop(events)
        now_ms = NOW + t
        if kind == "batch":
            shard = int(rng.integers(0, 3))  # three busy shards, five idle ones
            values = rng.normal(float(rng.normal()), 1.0, int(rng.integers(1, 400)))
            states[shard].apply(values, states[shard].last_offset + 1)
            for worker in workers:
                worker.batch(shard, values, now_ms)
        elif kind == "record":
            median = float(rng.normal(0.0, 0.3))
            view = GlobalView((0.5,), (median,), int(rng.integers(100, 5_000)), 8, 0.01, now_ms)
            for worker in workers:
                worker.record(view)
        else:
            for worker in workers:
                worker.tick(now_ms)
    eager, lazy = workers
    assert sorted(lazy.sent) == sorted(eager.sent)  # one tick's shards may come in any order
    assert any(kind == "heartbeat" for _, _, kind in lazy.sent)
    assert lazy.looked_at < eager.looked_at


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_capped_rechecks_take_each_record_no_later_than_the_bound(seed: int, per_tick: int) -> None:
    # With the re-checks capped, the sends may come a few ticks later than looking at every
    # shard would: the guarantee is that every shard with unsent numbers has been checked
    # against a record (or a newer one) within ceil(S / per_tick) ticks of it.
    rule = build_shard_rule("budget", interval_ms=200, theta=0.01, heartbeat_ms=1_000, growth=2.0, shards_hint=8)
    worker = _Worker(rule, lazy=True, schedule=FlushSchedule(per_tick=10_000, recheck_per_tick=per_tick))
    rng = np.random.default_rng(seed)
    states = [ShardState.empty(shard, 200) for shard in range(8)]
    for shard, state in enumerate(states):
        worker.add(shard, state)
    bound = -(-len(states) // per_tick)
    owed: list[tuple[int, int, set[int]]] = []  # (record, ticks left, shards that must take it)
    deferred = False  # whether the cap held some re-check over to a later tick
    for t in range(0, 6_000, 50):
        for _ in range(int(rng.integers(0, 3))):
            shard = int(rng.integers(0, 8))
            values = rng.normal(float(rng.normal()), 1.0, int(rng.integers(1, 400)))
            states[shard].apply(values, states[shard].last_offset + 1)
            worker.batch(shard, values, NOW + t)
        if rng.random() < 0.3:
            view = GlobalView((0.5,), (float(rng.normal(0.0, 0.3)),), int(rng.integers(100, 5_000)), 8, 0.01, NOW + t)
            worker.record(view)
            owed.append((worker.records, bound, set(worker.schedule.unsent)))
        worker.tick(NOW + t)
        deferred |= worker.schedule.pending_rechecks > 0
        still: list[tuple[int, int, set[int]]] = []
        for record, left, shards in owed:
            behind = {shard for shard in shards if worker.shards[shard].view_seen < record}
            assert behind == set() or left > 1
            if behind:
                still.append((record, left - 1, behind))
        owed = still
    assert worker.sent  # the shards did send
    assert deferred or per_tick > 1  # with one a tick, some record found several shards to re-check
