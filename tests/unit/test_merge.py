"""The global estimate merged from shard snapshots, audited against exact ranks."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from pipeline.core.exact import check_rank
from pipeline.core.merge import GlobalEstimator
from pipeline.core.sketch import ShardState
from pipeline.core.wire import SketchSnapshot

K = 200
QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)
SHARDS = 8
COUNT = 240_000


def snapshot(shard: int, values: npt.ArrayLike, offset: int = 100, rejected: int = 0) -> SketchSnapshot:
    state = ShardState.empty(shard, K)
    state.apply(np.asarray(values, dtype=np.float64), offset, {"malformed_json": rejected} if rejected else {})
    # Go through the wire format, as the aggregator does.
    return SketchSnapshot.from_bytes(SketchSnapshot.from_state(state, ts=1).to_bytes())


def dataset(name: str) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(2024)
    if name == "normal":
        return rng.normal(50.0, 10.0, COUNT)
    if name == "lognormal":
        return rng.lognormal(0.0, 2.0, COUNT)
    if name == "sorted":  # each shard sees one contiguous range: the worst case for naive merging
        return np.sort(rng.normal(0.0, 1.0, COUNT))
    if name == "ties":
        return rng.integers(0, 5, COUNT).astype(np.float64)
    raise AssertionError(name)


def estimator_over(data: npt.NDArray[np.float64]) -> GlobalEstimator:
    estimator = GlobalEstimator(K, QUANTILES)
    # Uneven split points, so that shard sizes differ.
    bounds = np.sort(np.random.default_rng(1).choice(np.arange(1, data.size), SHARDS - 1, replace=False))
    for shard, part in enumerate(np.split(data, bounds)):
        assert estimator.offer(snapshot(shard, part))
    return estimator


@pytest.mark.parametrize("name", ["normal", "lognormal", "sorted", "ties"])
def test_merged_estimate_is_within_its_rank_error_of_the_truth(name: str) -> None:
    data = dataset(name)
    record = estimator_over(data).record(ts=9)
    truth = np.sort(data)
    assert record.n == COUNT
    assert record.shards == SHARDS
    assert 0.0 < record.rank_error < 0.02
    median = check_rank(truth, 0.5, record.median.value)
    assert median.within(record.rank_error), median
    assert [e.q for e in record.quantiles] == list(QUANTILES)
    for estimate in record.quantiles:
        check = check_rank(truth, estimate.q, estimate.band.value)
        assert check.within(record.rank_error), check
        assert estimate.band.lower <= check.exact <= estimate.band.upper


def test_n_is_the_exact_sum_of_the_shards_counts() -> None:
    estimator = GlobalEstimator(K, (0.5,))
    sizes = [1, 10, 1000, 12_345, 0]
    for shard, size in enumerate(sizes):
        estimator.offer(snapshot(shard, np.arange(size)))
    assert estimator.n == sum(sizes)
    assert estimator.record(ts=1).n == sum(sizes)
    assert estimator.merged_sketch().n == sum(sizes)


def test_rejections_are_summed_over_shards() -> None:
    estimator = GlobalEstimator(K, (0.5,))
    estimator.offer(snapshot(0, [1.0], rejected=3))
    estimator.offer(snapshot(1, [2.0], rejected=4))
    assert estimator.record(ts=1).rejected == 7


def test_rejections_follow_the_held_snapshots_through_replacement_and_retirement() -> None:
    estimator = GlobalEstimator(K, (0.5,))
    estimator.offer(snapshot(0, [1.0], offset=5, rejected=3))
    estimator.offer(snapshot(1, [2.0], rejected=4))
    estimator.offer(snapshot(0, [1.0, 2.0], offset=6, rejected=5))  # the shard's count, not an increment
    assert not estimator.offer(snapshot(0, [1.0], offset=4, rejected=90))  # older: not taken, not counted
    assert estimator.record(ts=1).rejected == 9
    estimator.forget(1)
    assert estimator.record(ts=2).rejected == 5


def test_older_snapshot_does_not_replace_a_newer_one() -> None:
    estimator = GlobalEstimator(K, (0.5,))
    assert estimator.offer(snapshot(0, np.arange(100), offset=500))
    assert not estimator.offer(snapshot(0, np.arange(10), offset=499))
    assert estimator.n == 100
    assert estimator.record(ts=1).median.value == 50.0


def test_newer_snapshot_replaces_the_held_one_and_the_merge() -> None:
    estimator = GlobalEstimator(K, (0.5,))
    estimator.offer(snapshot(0, np.arange(100), offset=5))
    assert estimator.record(ts=1).median.value == 50.0
    assert estimator.offer(snapshot(0, np.arange(1000, 1101), offset=6))
    assert estimator.n == 101
    assert estimator.record(ts=2).median.value == 1050.0


def test_forget_removes_a_shard() -> None:
    estimator = GlobalEstimator(K, (0.5,))
    estimator.offer(snapshot(0, np.arange(100)))
    estimator.offer(snapshot(1, np.arange(100, 300)))
    assert estimator.record(ts=1).median.value >= 100.0
    estimator.forget(1)
    estimator.forget(42)  # unknown shard: nothing to do
    assert (estimator.shard_count, estimator.n) == (1, 100)
    assert [s.shard for s in estimator.shards()] == [0]
    assert estimator.record(ts=2).median.value == 50.0


def test_shards_are_listed_by_id() -> None:
    estimator = GlobalEstimator(K, (0.5,))
    for shard in (3, 0, 2):
        estimator.offer(snapshot(shard, [float(shard)]))
    assert [s.shard for s in estimator.shards()] == [0, 2, 3]


def test_the_listing_follows_shards_that_come_go_and_are_replaced() -> None:
    # The sorted ids are kept between calls: every change of the shard set must show.
    estimator = GlobalEstimator(K, (0.5,))
    rng = np.random.default_rng(5)
    held: dict[int, int] = {}  # shard: offset of its latest snapshot
    for step in range(300):
        shard = int(rng.integers(0, 12))
        if rng.random() < 0.25:
            estimator.forget(shard)
            held.pop(shard, None)
        else:
            estimator.offer(snapshot(shard, [float(step)], offset=step + 1))
            held[shard] = step + 1
        if rng.random() < 0.5:
            assert [(s.shard, s.last_offset) for s in estimator.shards()] == sorted(held.items())
    assert [(s.shard, s.last_offset) for s in estimator.shards()] == sorted(held.items())


def test_an_empty_shard_does_not_break_the_merge() -> None:
    estimator = GlobalEstimator(K, (0.5, 0.9))
    estimator.offer(snapshot(0, np.arange(1, 100)))
    estimator.offer(SketchSnapshot.from_state(ShardState.empty(1, K), ts=1))
    record = estimator.record(ts=1)
    assert (record.n, record.shards) == (99, 2)
    assert record.median.value == 50.0
    assert all(math.isfinite(e.band.value) for e in record.quantiles)


def test_zero_shards_give_nan_values_and_n_zero() -> None:
    record = GlobalEstimator(K, (0.5, 0.99)).record(ts=3)
    assert (record.n, record.shards, record.rejected, record.ts) == (0, 0, 0, 3)
    bands = [record.median, *(e.band for e in record.quantiles)]
    assert all(math.isnan(x) for band in bands for x in (band.value, band.lower, band.upper))
    assert len(record.quantiles) == 2


# --- exact ranks ------------------------------------------------------------------------------

TIES = np.array([1.0, 2.0, 2.0, 2.0, 3.0])


def test_check_rank_on_ties_covers_the_whole_run_of_equal_values() -> None:
    check = check_rank(TIES, 0.5, 2.0)
    assert (check.rank_low, check.rank_high, check.exact) == (0.2, 0.8, 2.0)
    assert check.rank_error == 0.0
    assert check.within(0.0)


def test_check_rank_measures_distance_to_the_rank_interval() -> None:
    high = check_rank(TIES, 0.5, 3.0)  # rank interval [0.8, 1.0]
    assert high.rank_error == pytest.approx(0.3)
    assert not high.within(0.29)
    assert high.within(0.31)
    low = check_rank(TIES, 0.9, 1.0)  # rank interval [0.0, 0.2]
    assert low.rank_error == pytest.approx(0.7)


@pytest.mark.parametrize(("value", "low", "high"), [(-100.0, 0.0, 0.0), (0.999, 0.0, 0.0), (3.5, 1.0, 1.0)])
def test_check_rank_of_a_value_outside_the_data(value: float, low: float, high: float) -> None:
    check = check_rank(TIES, 0.5, value)
    assert (check.rank_low, check.rank_high) == (low, high)
    assert check.rank_error == pytest.approx(0.5)
    assert not check.within(0.49)


@pytest.mark.parametrize(
    ("q", "exact"), [(0.0, 1.0), (0.2, 1.0), (0.21, 2.0), (0.5, 2.0), (0.8, 2.0), (0.81, 3.0), (1.0, 3.0)]
)
def test_check_rank_exact_quantile_uses_the_lower_convention(q: float, exact: float) -> None:
    assert check_rank(TIES, q, 2.0).exact == exact


def test_check_rank_of_even_count_takes_the_lower_median() -> None:
    assert check_rank(np.array([1.0, 2.0, 3.0, 4.0]), 0.5, 2.5).exact == 2.0


def test_check_rank_refuses_empty_data() -> None:
    with pytest.raises(ValueError, match="empty"):
        check_rank(np.empty(0), 0.5, 1.0)
