"""The error-budgeted emission rule: the tracker's counts, when it sends, and the bound it keeps."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.budget import BudgetTracker, GlobalView, GridOptions, ShardLiveness, _at_or_below, _float32_cell_tops
from pipeline.core.codec import CodecOptions
from pipeline.core.emission import (
    BudgetRule,
    EmissionState,
    GeometricRule,
    IntervalRule,
    RuleName,
    ShardEmissionRule,
    build_shard_rule,
)
from pipeline.core.ingest import RecordBatch, ingest_batch
from pipeline.core.merge import GlobalEstimator
from pipeline.core.sketch import QuantileBand, ShardState
from pipeline.core.wire import MedianRecord, QuantileEstimate, ShardProgress, SketchSnapshot

FAST = settings(max_examples=60, deadline=None, database=None)
K = 200
QUANTILES = (0.1, 0.5, 0.9)


def view(
    n: int = 1000, shards: int = 4, theta: float | None = 0.01, served: dict[float, float] | None = None
) -> GlobalView:
    pairs = sorted((served or {0.5: 0.0}).items())
    return GlobalView(tuple(q for q, _ in pairs), tuple(x for _, x in pairs), n, shards, theta, ts=1)


def exact_counts(values: npt.NDArray[np.float64], x: float) -> tuple[int, int]:
    return int((values < x).sum()), int((values <= x).sum())


# --- GlobalView -------------------------------------------------------------------------------


def test_view_of_a_record_tracks_every_quantile_and_the_median() -> None:
    record = MedianRecord(
        n=500, shards=3, median=QuantileBand(5.0, 4.0, 6.0), rank_error=0.013,
        quantiles=(QuantileEstimate(0.9, QuantileBand(9.0, 8.0, 10.0)), QuantileEstimate(0.1, QuantileBand(1, 0, 2))),
        ts=42, theta=0.005,
    )  # fmt: skip
    seen = GlobalView.from_record(record)
    assert seen == GlobalView((0.1, 0.5, 0.9), (1.0, 5.0, 9.0), 500, 3, 0.005, 42)


def test_view_of_an_empty_record_is_none() -> None:
    nan = math.nan
    record = MedianRecord(
        0, 0, QuantileBand(nan, nan, nan), 0.01, (QuantileEstimate(0.5, QuantileBand(nan, nan, nan)),), 1
    )
    assert GlobalView.from_record(record) is None


# --- BudgetTracker ----------------------------------------------------------------------------


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(0, 3000), st.sampled_from(["normal", "ties"]))
def test_tracker_bounds_always_bracket_the_exact_counts(seed: int, size: int, kind: str) -> None:
    rng = np.random.default_rng(seed)

    def draw(size: int) -> npt.NDArray[np.float64]:
        return rng.normal(size=size) if kind == "normal" else rng.integers(0, 6, size).astype(np.float64)

    sketch = ShardState.empty(0, K)
    sketch.apply(draw(2000), 0)
    tracker = BudgetTracker(0.01)
    tracker.see(view(served={0.1: -1.2, 0.5: 0.0, 0.9: 1.3}))
    tracker.anchor(sketch.sketch)
    unsent = np.concatenate([draw(int(m)) for m in rng.integers(0, size + 1, 4)])
    for part in np.array_split(unsent, 3):
        tracker.observe(part)
    assert tracker.unsent == unsent.size
    assert np.array_equal(tracker.at_or_below, [(unsent <= g).sum() for g in tracker.grid])
    for x in [*rng.normal(size=20), *tracker.grid[:5], -1e9, 1e9, 0.0, 3.0]:
        low, high = tracker.bounds(float(x))
        below, at_or_below = exact_counts(unsent, float(x))
        assert low <= below <= at_or_below <= high


def _numbers_near(grid: npt.NDArray[np.float64], kind: str, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    near = rng.choice(grid[np.abs(grid) < 3], 3) if kind.startswith("a float32") else grid
    numbers = rng.normal(size=2000)
    if kind.startswith("infinities"):
        return np.concatenate([numbers, [np.inf, -np.inf, -0.0, 5e-324]])
    steps = [near, np.nextafter(near, np.inf), np.nextafter(near, -np.inf), near * (1 + 1e-9), near * (1 - 1e-9)]
    return np.concatenate([numbers, *steps])


_SPECIALS = [-1e300, -3.5e38, -1.0, -1e-320, 0.0, 1e-310, 1.0, 3.5e38, 1e39, 1e300]
_KINDS = ["a float32 step from a few grid values", "infinities and signed zeros", "at and next to every grid value"]


@pytest.mark.parametrize("kind", _KINDS)
def test_counts_are_exact_where_float32_keys_cannot_tell(kind: str) -> None:
    # The counts sort float32 keys: numbers within a float32 step of a grid value (or beyond
    # float32's range, or tiny) share its key. The tracker lays its grid at float32 cells' tops,
    # where a shared key is a number at or below the grid value: every count is exact.
    rng = np.random.default_rng(len(kind))
    served = np.unique(np.concatenate([_SPECIALS, rng.normal(size=20)]))
    tracker = BudgetTracker(0.01)
    tracker.see(GlobalView(tuple(np.linspace(0.0, 1.0, served.size)), tuple(served), 100, 1, 0.01, ts=1))
    tracker.anchor(None)  # no sketch: the grid is the served values, each at its float32 cell's top
    grid = tracker.grid
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf
        assert np.array_equal(grid.astype(np.float32), np.unique(served.astype(np.float32)))
        finite = np.isfinite(grid)
        assert np.all(np.nextafter(grid[finite], np.inf).astype(np.float32) > grid[finite].astype(np.float32))
    numbers = np.concatenate([_numbers_near(served, kind, rng), _numbers_near(grid, kind, rng)])
    for part in np.array_split(rng.permutation(numbers), 3):
        tracker.observe(part)
    assert np.array_equal(tracker.at_or_below, [(numbers <= g).sum() for g in grid])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=True), min_size=1, max_size=50))
def test_a_float32_cell_top_is_the_largest_number_with_its_key(values: list[float]) -> None:
    grid = np.asarray(values)
    tops = _float32_cell_tops(grid)
    with np.errstate(over="ignore", under="ignore"):
        keys = grid.astype(np.float32)
        assert np.array_equal(tops.astype(np.float32), np.unique(keys))
        finite = np.isfinite(tops)
        assert np.all(np.nextafter(tops[finite], np.inf).astype(np.float32) > tops[finite].astype(np.float32))
        slots = np.searchsorted(tops.astype(np.float32), keys)
    assert np.all(tops[slots] >= grid)


@pytest.mark.parametrize("kind", _KINDS)
def test_counts_are_exact_at_any_grid_value_not_only_at_float32_cell_tops(kind: str) -> None:
    # Off a cell's top, numbers sharing a grid value's key are counted in float64: each grid
    # value on its own when there are a few, all at once when there are many.
    rng = np.random.default_rng(len(kind))
    grid = np.unique(np.concatenate([_SPECIALS, rng.normal(size=20)]))
    numbers = _numbers_near(grid, kind, rng)
    counts = _at_or_below(list(np.array_split(rng.permutation(numbers), 3)), grid)
    assert np.array_equal(counts, [(numbers <= g).sum() for g in grid])


def test_tracker_grid_is_fine_near_the_tracked_values() -> None:
    state = ShardState.empty(0, K)
    state.apply(np.random.default_rng(1).normal(size=100_000), 0)
    tracker = BudgetTracker(0.01, options=GridOptions(cell_fraction=0.125, fine_span=0.02))
    tracker.see(view(served={0.5: 0.0}))
    tracker.anchor(state.sketch)
    fresh = np.random.default_rng(2).normal(size=200_000)
    tracker.observe(fresh)
    low, high = tracker.bounds(0.01)
    # One fine cell holds about theta/8 of the shard's numbers (the sketch's quantiles are approximate).
    assert 0 < high - low < 0.01 * fresh.size
    assert tracker.grid.size < 2 * (0.02 / 0.00125 + 1) + 102


def test_a_snapshots_grid_is_laid_by_the_first_numbers_around_the_record_it_answered() -> None:
    # Laying the grid is most of a snapshot's cost; a shard that gets no number before its
    # next snapshot never needs it. When laid, it goes around the record of the snapshot
    # (not a newer one) and counts every unsent number.
    rng = np.random.default_rng(11)
    state = ShardState.empty(0, K)
    state.apply(rng.normal(size=5_000), 0)
    tracker = BudgetTracker(0.01, shards_hint=2, expected=(0.5,))
    eager = BudgetTracker(0.01, shards_hint=2, expected=(0.5,))
    answered = view(served={0.5: 0.3})
    for each in (tracker, eager):
        each.see(answered)
    eager.anchor(state.sketch)
    eager_grid = eager.grid.copy()  # laid at the snapshot
    tracker.anchor(state.sketch)
    assert tracker.unsent == 0
    assert not tracker.over_budget()
    tracker.see(view(served={0.5: -0.4}))  # a newer record before the first numbers
    fresh = rng.normal(size=3_000)
    tracker.observe(fresh)
    assert np.array_equal(tracker.grid, eager_grid)  # the same sketch: the same grid as laid at once
    assert np.array_equal(tracker.at_or_below, [(fresh <= g).sum() for g in tracker.grid])
    state.apply(rng.normal(2.0, 1.0, 50_000), 1)  # the sketch moves on after the next snapshot...
    tracker.anchor(state.sketch)
    state.apply(rng.normal(2.0, 1.0, 50_000), 2)  # ... and before its first numbers: laid from this one
    later = rng.normal(size=100)
    tracker.observe(later)
    assert tracker.grid.max() > eager_grid.max() + 1.0
    assert np.array_equal(tracker.at_or_below, [(later <= g).sum() for g in tracker.grid])


def test_before_any_record_the_grid_surrounds_the_shards_own_quantiles() -> None:
    state = ShardState.empty(0, K)
    state.apply(np.random.default_rng(4).normal(size=10_000), 0)
    tracker = BudgetTracker(0.01, expected=(0.5, 0.9))
    tracker.anchor(state.sketch)
    local_median = state.sketch.get_quantile(0.5, True)
    nearest = np.sort(np.abs(tracker.grid - local_median))[:3]
    # Fine cells (theta/8 of the shard's ranks) around its own median. They fall on the
    # items the sketch kept, which its random compaction picks, so compare with the
    # same sketch's grid without them (coarse cells only) rather than a fixed width:
    # over 300 runs the fine grid's third-nearest point lay at most 0.014 away, the
    # coarse one's about 0.024.
    coarse = BudgetTracker(0.01, expected=(0.9,))
    coarse.anchor(state.sketch)
    coarse_nearest = np.sort(np.abs(coarse.grid - local_median))[:3]
    assert nearest.max() < 0.75 * coarse_nearest.max()
    tracker.see(view(served={0.5: local_median + 0.001}))
    tracker.observe(np.random.default_rng(5).normal(size=1000))
    low, high = tracker.bounds(local_median + 0.001)
    assert high - low < 20  # so the first record can be vouched for without a snapshot


def test_without_a_grid_the_bounds_are_zero_and_everything() -> None:
    tracker = BudgetTracker(0.01)
    tracker.anchor(None)  # a snapshot before any record: nothing to lay a grid around
    tracker.observe(np.arange(10.0))
    assert tracker.bounds(4.5) == (0, 10)


def test_over_budget_exactly_when_the_worst_deviation_passes_the_allowance() -> None:
    # 4 shards of N=4000: allowance theta * (N / S + U) = 0.01 * (1000 + U). All numbers land
    # above the median: B = 0, so |B - qU| = U / 2; over once U / 2 > 10 + U / 100, i.e. U > 20.4.
    tracker = BudgetTracker(0.01, shards_hint=4)
    tracker.see(view(n=4000, shards=2, served={0.5: 0.0}))
    state = ShardState.empty(0, K)
    tracker.anchor(state.sketch)
    tracker.answered = False  # a snapshot went out before this record; pretend the record is newer
    for sent in range(1, 26):
        tracker.observe(np.array([1.0]))
        assert tracker.allowance() == pytest.approx(0.01 * (4000 / 4 + sent))
        assert tracker.over_budget() == (sent / 2 > 0.01 * (1000 + sent)), sent


def test_the_record_budget_if_smaller_and_the_shards_hint_if_larger_are_used() -> None:
    tracker = BudgetTracker(0.02, shards_hint=8)
    tracker.see(view(n=8000, shards=2, theta=0.005))
    assert tracker.effective_theta == 0.005
    assert tracker.allowance() == pytest.approx(0.005 * 8000 / 8)
    tracker.see(view(n=8000, shards=16, theta=None))
    assert tracker.effective_theta == 0.02
    assert tracker.allowance() == pytest.approx(0.02 * 500)


def test_one_budget_snapshot_per_record_then_wait_for_the_next() -> None:
    tracker = BudgetTracker(0.01)
    tracker.see(view(n=100, shards=1, served={0.5: 0.0}))
    tracker.anchor(None)
    tracker.observe(np.ones(100))
    assert tracker.worst_deviation() > tracker.allowance()
    assert not tracker.over_budget()  # it already answered this record: the next one will reflect it
    tracker.see(view(n=200, shards=1, served={0.5: 0.5}))
    assert tracker.over_budget()


@pytest.mark.parametrize(("theta", "hint", "expected"), [(0.0, 1, ()), (1.0, 1, ()), (0.01, 0, ()), (0.01, 1, (2.0,))])
def test_tracker_refuses_a_meaningless_budget(theta: float, hint: int, expected: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match=r"theta|shards_hint|expected"):
        BudgetTracker(theta, hint, expected)


class EagerCheck:
    """The budget check in its first form, as a reference: every batch counted against the grid
    at once (a searchsorted and a bincount), and the deviation compared after every batch."""

    def __init__(self, theta: float, shards_hint: int) -> None:
        self.theta, self.shards_hint = theta, shards_hint
        self.view: GlobalView | None = None
        self.answered = False
        self.grid = np.empty(0)
        self.counts = np.empty(0, dtype=np.int64)
        self.unsent = 0

    def see(self, seen: GlobalView | None) -> None:
        if seen is not None and seen != self.view:
            self.view, self.answered = seen, False

    def anchor(self, grid: npt.NDArray[np.float64]) -> None:
        self.grid, self.counts, self.unsent = grid.copy(), np.zeros(grid.size, dtype=np.int64), 0
        self.answered = self.view is not None

    def observe(self, values: npt.NDArray[np.float64]) -> None:
        self.unsent += values.size
        slots = np.searchsorted(self.grid, values, side="left")
        self.counts += np.cumsum(np.bincount(slots, minlength=self.grid.size + 1)[:-1])

    def over_budget(self) -> bool:
        if self.view is None or self.answered or self.unsent == 0:
            return False
        theta = self.theta if self.view.theta is None else min(self.theta, self.view.theta)
        allowance = theta * (self.view.n / max(self.view.shards, self.shards_hint, 1) + self.unsent)
        worst = 0.0
        for q, x in zip(self.view.quantiles, self.view.values, strict=True):
            slot = int(np.searchsorted(self.grid, x, side="left"))
            low = int(self.counts[slot - 1]) if slot > 0 else 0
            high = int(self.counts[slot]) if slot < self.grid.size else self.unsent
            worst = max(worst, high - q * self.unsent, q * self.unsent - low)
        return worst > allowance


@settings(max_examples=80, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["stationary", "drift", "step", "ties"]),
    theta=st.sampled_from([0.005, 0.02, 0.1, 0.6]),
    max_batch=st.sampled_from([1, 30, 700]),
    max_uncounted=st.sampled_from([1, 50, 1 << 18]),
    record_theta=st.sampled_from([None, 0.003]),
)
def test_the_lazy_tracker_sends_exactly_when_the_eager_check_would(
    seed: int, kind: str, theta: float, max_batch: int, max_uncounted: int, record_theta: float | None
) -> None:
    # The tracker counts only when a check is due and skips checks the margin rules out. Side by
    # side with the eager form, on the same grids, views and batches, it must answer the same
    # after every batch: never later (the bound would break), and never earlier either.
    rng = np.random.default_rng(seed)
    shards_hint = int(rng.integers(1, 5))
    tracker = BudgetTracker(theta, shards_hint, QUANTILES, GridOptions(max_uncounted=max_uncounted))
    eager = EagerCheck(theta, shards_hint)
    shard = ShardState.empty(0, K)
    sent = checks = 0
    for step in range(300):
        size = int(rng.integers(0, max_batch + 1))
        values = stream(kind, rng, 0, size, step / 300)
        shard.apply(values, step)
        tracker.observe(values)
        eager.observe(values)
        if rng.random() < 0.1 and shard.n:  # a newer record: values near the shard's own quantiles
            served = {q: float(shard.sketch.get_quantile(q)) + float(rng.normal(0.0, 0.05)) for q in QUANTILES}
            n = int(shard.n * rng.choice([0.1, 1.0, 8.0]))
            seen = view(n=max(n, 1), shards=int(rng.integers(1, 5)), theta=record_theta, served=served)
            tracker.see(seen)
            eager.see(seen)
        over = tracker.over_budget()
        assert over == eager.over_budget(), step
        checks += 1
        if over or rng.random() < 0.03:  # a snapshot: the budget's, or the growth cap's / idle flush
            sent += over
            tracker.anchor(shard.sketch)
            eager.anchor(tracker.grid)
        elif rng.random() < 0.05:
            assert np.array_equal(tracker.at_or_below, eager.counts)
    assert tracker.unsent == eager.unsent
    assert np.array_equal(tracker.at_or_below, eager.counts)
    assert checks == 300


def test_quiet_batches_are_not_counted_until_a_check_needs_them() -> None:
    # After a check with a wide margin, batches are kept, not counted; a check (or the memory
    # cap) counts them all at once, exactly.
    state = ShardState.empty(0, K)
    state.apply(np.random.default_rng(6).normal(size=10_000), 0)
    tracker = BudgetTracker(0.01, options=GridOptions(max_uncounted=5_000))
    tracker.see(view(n=1_000_000, shards=1, served={0.5: 0.0}))  # allowance 10,000 + U / 100
    tracker.anchor(state.sketch)
    tracker.answered = False
    fresh = np.random.default_rng(7).normal(size=4_000)
    tracker.observe(fresh[:100])
    assert not tracker.over_budget()  # checks: counts the first 100
    for part in np.array_split(fresh[100:], 10):
        tracker.observe(part)
        assert not tracker.over_budget()  # 19,000 numbers of margin: no count, no check
    assert tracker.uncounted == 3_900  # what the laziness saves
    assert np.array_equal(tracker.at_or_below, [(fresh <= g).sum() for g in tracker.grid])
    tracker.observe(np.random.default_rng(8).normal(size=5_000))  # past the cap: counted at once
    assert tracker.uncounted == 0


# --- the rules --------------------------------------------------------------------------------


def fed(rule: ShardEmissionRule, n: int, version: int, emitted_n: int = -1) -> EmissionState:
    state = rule.new_state()
    state.emitted_n = emitted_n
    state.emitted_version = 0 if emitted_n >= 0 else -1
    state.observe(n, version)
    return state


@pytest.mark.parametrize("rule", [BudgetRule(0.01), GeometricRule(2.0)])
def test_a_shard_with_its_first_numbers_sends_at_once(rule: ShardEmissionRule) -> None:
    assert rule.should_emit(fed(rule, n=1, version=0), now_ms=5)
    assert rule.should_emit(fed(rule, n=1, version=3, emitted_n=0), now_ms=5)  # announced empty, then data
    assert not rule.should_emit(fed(rule, n=0, version=-1), now_ms=5)  # nothing at all yet


@pytest.mark.parametrize("rule", [BudgetRule(0.01, growth=2.0), GeometricRule(2.0)])
def test_the_count_doubling_sends_and_nothing_less_without_a_record(rule: ShardEmissionRule) -> None:
    assert not rule.should_emit(fed(rule, n=1999, version=5, emitted_n=1000), now_ms=5)
    assert rule.should_emit(fed(rule, n=2000, version=5, emitted_n=1000), now_ms=5)
    assert not rule.should_emit(fed(rule, n=2000, version=0, emitted_n=1000), now_ms=5)  # nothing new


def test_every_budget_snapshot_is_urgent_and_no_other() -> None:
    # A snapshot resets the counts the latest record relies on: it must be replaced at once.
    state = EmissionState()
    assert BudgetRule(0.01).urgent(state)
    assert not GeometricRule().urgent(state)
    assert not IntervalRule(200).urgent(state)


def test_the_budget_rule_sends_when_the_budget_is_spent_and_not_before() -> None:
    rule = BudgetRule(0.01, growth=1000.0, shards_hint=1)
    state = rule.new_state()
    state.observe(100, 0, np.zeros(100))
    state.see(view(n=100, shards=1, served={0.5: 0.0}))
    assert rule.should_emit(state, 0)  # first numbers
    sketch = ShardState.empty(0, K).sketch
    sketch.update(np.linspace(-1, 1, 100))
    state.mark_emitted(0, sketch)
    state.see(view(n=100, shards=1, served={0.5: 0.001}))
    sent = 0
    while not rule.should_emit(state, 0):
        sent += 1
        state.observe(100 + sent, sent, np.array([5.0]))  # all above the median: |B - U/2| = U/2
    assert sent / 2 > 0.01 * (100 + sent) >= (sent - 1) / 2 - 0.01


@pytest.mark.parametrize("rule", [BudgetRule(0.01, idle_ms=200), GeometricRule(2.0, idle_ms=200)])
def test_an_idle_shard_flushes_what_is_unsent(rule: ShardEmissionRule) -> None:
    state = fed(rule, n=1100, version=9, emitted_n=1000)
    state.observe(1100, 9, now_ms=1_000)
    state.observe(1101, 10, now_ms=1_050)
    assert not rule.should_emit(state, 1_249)
    assert rule.should_emit(state, 1_250)


@pytest.mark.parametrize("rule", [BudgetRule(0.01, heartbeat_ms=1000), GeometricRule(2.0, heartbeat_ms=1000),
                                  IntervalRule(200, heartbeat_ms=1000)])  # fmt: skip
def test_a_heartbeat_goes_out_after_a_silence_of_heartbeat_ms(rule: ShardEmissionRule) -> None:
    state = rule.new_state()
    state.mark_emitted(5_000)
    assert not rule.should_heartbeat(state, 5_999)
    assert rule.should_heartbeat(state, 6_000)
    state.mark_heartbeat(6_000)
    assert not rule.should_heartbeat(state, 6_999)


def test_the_interval_rule_sends_no_heartbeat_unless_asked() -> None:
    assert not IntervalRule(200).should_heartbeat(EmissionState(), 10**12)


def test_rules_are_built_from_the_settings_names() -> None:
    def build(name: RuleName) -> ShardEmissionRule:
        return build_shard_rule(name, interval_ms=250, theta=0.02, heartbeat_ms=9000, growth=3.0, shards_hint=8)

    assert build("budget") == BudgetRule(0.02, 3.0, 9000, 8, idle_ms=250)
    assert build("geometric") == GeometricRule(3.0, 9000, idle_ms=250)
    assert build("interval") == IntervalRule(250, 9000)
    assert isinstance(build("budget").new_state().tracker, BudgetTracker)
    with pytest.raises(ValueError, match="unknown emission rule"):
        build("sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [lambda: BudgetRule(0.0), lambda: BudgetRule(0.01, 1.0), lambda: GeometricRule(1.0)])
def test_rules_refuse_meaningless_parameters(make: object) -> None:
    with pytest.raises(ValueError, match=r"theta|growth"):
        make()  # type: ignore[operator]


# --- aggregator side --------------------------------------------------------------------------


def snapshot(shard: int, values: npt.NDArray[np.float64], offset: int, ts: int) -> SketchSnapshot:
    state = ShardState.empty(shard, K)
    state.apply(values, offset)
    return SketchSnapshot.from_state(state, ts)


def test_liveness_counts_pending_numbers_and_silent_shards() -> None:
    liveness = ShardLiveness()
    liveness.note_snapshot(snapshot(0, np.arange(100.0), offset=10, ts=1_000))
    liveness.note_snapshot(snapshot(1, np.arange(50.0), offset=5, ts=1_000))
    liveness.note_progress(ShardProgress(0, 100, 180, 14, ts=9_000))
    liveness.note_progress(ShardProgress(0, 100, 150, 12, ts=8_000))  # older, arrived late: ignored
    assert liveness.pending() == 80
    assert liveness.stale(now_ms=11_000, max_age_ms=5_000) == [1]
    liveness.note_snapshot(snapshot(0, np.arange(180.0), offset=14, ts=9_500))
    assert liveness.pending() == 0
    liveness.forget(1)
    assert liveness.stale(now_ms=20_000, max_age_ms=5_000) == [0]


def test_record_states_rank_bound_as_sketch_error_plus_theta() -> None:
    estimator = GlobalEstimator(K, QUANTILES)
    data = np.random.default_rng(3).lognormal(size=50_000)
    estimator.offer(snapshot(0, data, offset=1, ts=1))
    record = estimator.record(ts=2, theta=0.005, pending=77, stale_shards=2)
    merged = estimator.merged_sketch()
    eps = merged.normalized_rank_error(False)
    assert (record.rank_error, record.theta, record.pending, record.stale_shards) == (eps, 0.005, 77, 2)
    for estimate in (*record.quantiles, QuantileEstimate(0.5, record.median, record.rank_bound)):
        assert estimate.rank_bound == pytest.approx(eps + 0.005)
        assert estimate.band.lower == merged.get_quantile(max(estimate.q - eps - 0.005, 0.0))
        assert estimate.band.upper == merged.get_quantile(min(estimate.q + eps + 0.005, 1.0))
    assert estimator.record(ts=2).quantiles[0].rank_bound == eps


# --- the bound, end to end: shards, rule, wire, aggregator, exact ranks -----------------------------


def rank_distance(data: npt.NDArray[np.float64], q: float, x: float) -> float:
    """Distance from q to x's true rank interval [below, at or below] / n in ``data``."""
    below, at_or_below = exact_counts(data, x)
    return max(below / data.size - q, q - at_or_below / data.size, 0.0)


class Simulation:
    """Shards feeding a rule; snapshots through the wire into a GlobalEstimator; records fed back."""

    def __init__(self, rule: ShardEmissionRule, shards: int, theta: float | None) -> None:
        self.rule = rule
        self.theta = theta
        self.states = [ShardState.empty(i, K) for i in range(shards)]
        self.emission = [rule.new_state() for _ in range(shards)]
        self.data: list[list[npt.NDArray[np.float64]]] = [[] for _ in range(shards)]
        self.estimator = GlobalEstimator(K, QUANTILES)
        self.standing: MedianRecord | None = None
        self.sent_since_publish = False
        self.urgent = False

    def ingest(self, shard: int, values: npt.NDArray[np.float64], now_ms: int) -> None:
        state = self.states[shard]
        state.apply(values, state.last_offset + 1)
        self.data[shard].append(values)
        self.emission[shard].observe(state.n, state.last_offset, values, now_ms)
        self.tick(shard, now_ms)

    def tick(self, shard: int, now_ms: int) -> bool:
        if not self.rule.should_emit(self.emission[shard], now_ms):
            return False
        data = SketchSnapshot.from_state(self.states[shard], now_ms, self.rule.urgent(self.emission[shard])).to_bytes()
        received = SketchSnapshot.from_bytes(data)
        self.estimator.offer(received)
        self.urgent |= received.urgent
        self.emission[shard].mark_emitted(now_ms, self.states[shard].sketch)
        self.sent_since_publish = True
        return True

    def publish(self, now_ms: int) -> None:
        for _ in range(len(self.states) + 2):
            self.sent_since_publish = self.urgent = False
            self.standing = MedianRecord.from_json(self.estimator.record(now_ms, self.theta).to_json())
            seen = GlobalView.from_record(self.standing)
            answered = False
            for i, emission in enumerate(self.emission):
                emission.see(seen)
                answered |= self.tick(i, now_ms)
            if not answered:
                return
        raise AssertionError("the shards kept answering the records")

    def excess(self) -> float:
        """How far the standing record's worst served rank is beyond the sketch's own error plus theta.

        The sketch's own error is measured exactly on the numbers it reflects (each shard's
        first ``n`` of its last snapshot), so the check does not depend on KLL's 99% bound.
        """
        assert self.standing is not None
        assert self.theta is not None
        everything = np.concatenate([np.concatenate(parts) for parts in self.data if parts])
        reflected = np.concatenate([np.concatenate(self.data[s.shard])[: s.n] for s in self.estimator.shards() if s.n])
        served = [(0.5, self.standing.median.value), *((e.q, e.band.value) for e in self.standing.quantiles)]
        return max(rank_distance(everything, q, x) - rank_distance(reflected, q, x) - self.theta for q, x in served)


def stream(kind: str, rng: np.random.Generator, shard: int, size: int, progress: float) -> npt.NDArray[np.float64]:
    if kind == "stationary":
        return rng.lognormal(0.0, 1.0, size)
    if kind == "drift":
        return rng.normal(4.0 * progress, 1.0, size)
    if kind == "step":
        return rng.normal(3.0 if progress > 0.5 else 0.0, 1.0, size)
    if kind == "skewed":  # each shard its own distribution
        return rng.normal(shard, 1.0 + shard, size)
    return rng.integers(0, 4, size).astype(np.float64)  # "ties": many equal values


@settings(max_examples=60, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shards=st.integers(1, 5),
    theta=st.sampled_from([0.005, 0.02, 0.1]),
    kind=st.sampled_from(["stationary", "drift", "step", "skewed", "ties"]),
    publish_every=st.integers(1, 6),
    max_batch=st.sampled_from([5, 60, 400]),
)
def test_served_quantiles_stay_within_the_sketch_error_plus_theta(
    seed: int, shards: int, theta: float, kind: str, publish_every: int, max_batch: int
) -> None:
    rng = np.random.default_rng(seed)
    rule = BudgetRule(theta, growth=2.0, heartbeat_ms=None, shards_hint=shards, quantiles=QUANTILES)
    sim = Simulation(rule, shards, theta)
    rounds = 40
    for round_index in range(rounds):
        for shard in range(shards):
            size = int(rng.integers(0, max_batch + 1))
            if size:
                sim.ingest(shard, stream(kind, rng, shard, size, round_index / rounds), now_ms=round_index)
        # The aggregator publishes on its interval, and at once after an urgent snapshot.
        if sim.sent_since_publish and (round_index % publish_every == 0 or sim.urgent):
            sim.publish(now_ms=round_index)
        if sim.standing is not None and not sim.sent_since_publish:
            # A record every shard has seen, and none has answered since: it must hold now.
            assert sim.excess() <= 1e-12


def test_without_the_budget_the_same_check_fails() -> None:
    # The geometric rule on a step: the numbers after the step wait for the count to double.
    rng = np.random.default_rng(5)
    sim = Simulation(GeometricRule(2.0, heartbeat_ms=None), shards=2, theta=0.02)
    worst = 0.0
    for round_index in range(40):
        for shard in range(2):
            sim.ingest(shard, stream("step", rng, shard, 100, round_index / 40), now_ms=round_index)
        if sim.sent_since_publish:
            sim.publish(now_ms=round_index)
        worst = max(worst, sim.excess())
    assert worst > 0.05


def test_the_budget_counts_exactly_what_ingestion_accepted() -> None:
    state = ShardState.empty(0, K)
    batch = RecordBatch([5, 6, 7], [b"1.5", b'[2, "x", 3]', b"nope"], [None, None, None])
    result = ingest_batch(state, batch, CodecOptions())
    assert result.accepted_values.tolist() == [1.5, 2.0, 3.0]
    assert result.accepted == result.accepted_values.size == state.n
    assert ingest_batch(state, batch, CodecOptions()).accepted_values.size == 0  # a replay adds nothing
