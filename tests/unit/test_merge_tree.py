"""The merge tree's root against exact values from the raw data, through random histories."""

from __future__ import annotations

import math

import datasketches
import numpy as np
import numpy.typing as npt
import pytest

from pipeline.core.exact import check_rank
from pipeline.core.merge import GlobalEstimator
from pipeline.core.merge_tree import MergeTree, MergeTreeOptions
from pipeline.core.sketch import ShardState
from pipeline.core.wire import SketchSnapshot

K = 64  # small, so that shards of a few thousand numbers are in estimation mode
QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
SHAPES = [MergeTreeOptions(2, 2), MergeTreeOptions(3, 2), MergeTreeOptions(8, 8), MergeTreeOptions(4, 16)]


def sketch_bytes(values: npt.NDArray[np.float64], k: int = K) -> bytes:
    sketch = datasketches.kll_doubles_sketch(k)
    if values.size:
        sketch.update(values)
    return bytes(sketch.serialize())


def assert_root_matches(tree: MergeTree, data: dict[int, npt.NDArray[np.float64]]) -> None:
    """Same n, min and max as the raw data, and every quantile within the sketch's bound."""
    merged = tree.merged()
    everything = np.sort(np.concatenate([np.empty(0), *data.values()]))
    assert int(merged.n) == everything.size
    assert len(tree) == len(data)
    if everything.size == 0:
        assert merged.is_empty()
        return
    assert merged.get_min_value() == everything[0]
    assert merged.get_max_value() == everything[-1]
    bound = float(merged.normalized_rank_error(False))
    for q in QUANTILES:
        check = check_rank(everything, q, float(merged.get_quantile(q)))
        assert check.within(bound), (check, bound)


@pytest.mark.parametrize("options", SHAPES, ids=lambda o: f"{o.leaf_fanout}x{o.node_fanout}")
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_updates_and_removals_keep_the_root_exact_in_n_and_within_the_bound(
    options: MergeTreeOptions, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    tree = MergeTree(K, options)
    # Sparse ids, far apart, so that slots and shard ids differ.
    ids = [int(x) for x in rng.choice(10**9, 60, replace=False)]
    data: dict[int, npt.NDArray[np.float64]] = {}
    for step in range(400):
        shard = ids[int(rng.integers(len(ids)))]
        if shard in data and rng.random() < 0.2:
            assert tree.remove(shard)
            del data[shard]
        else:
            # A shard's new snapshot covers its old numbers and some new ones, like a real shard.
            grown = rng.lognormal(float(shard % 7), 1.5, int(rng.integers(0, 3000)))
            data[shard] = np.concatenate([data.get(shard, np.empty(0)), grown])
            tree.update(shard, sketch_bytes(data[shard]))
        if step % 25 == 24:  # several updates between two reads, as between two publishes
            assert_root_matches(tree, data)
    for shard in list(data):
        assert tree.remove(shard)
        del data[shard]
    assert_root_matches(tree, data)


def test_growth_far_beyond_the_first_capacity_keeps_every_shard() -> None:
    rng = np.random.default_rng(7)
    tree = MergeTree(K, MergeTreeOptions(2, 2))
    data: dict[int, npt.NDArray[np.float64]] = {}
    heights = set()
    for shard in range(300):
        data[shard * 1000 + 5] = rng.normal(shard, 1.0, int(rng.integers(1, 200)))
        tree.update(shard * 1000 + 5, sketch_bytes(data[shard * 1000 + 5]))
        if shard % 37 == 0:
            assert_root_matches(tree, data)
        heights.add(tree.height)
    assert_root_matches(tree, data)
    assert tree.height == math.ceil(math.log2(300))
    assert len(heights) == tree.height  # it grew one level at a time


def test_a_removed_slot_is_reused_and_the_tree_does_not_grow() -> None:
    tree = MergeTree(K, MergeTreeOptions(2, 2))
    data = {shard: np.arange(shard * 10.0, shard * 10.0 + 10) for shard in range(8)}
    for shard, values in data.items():
        tree.update(shard, sketch_bytes(values))
    height = tree.height
    assert tree.remove(3)
    assert not tree.remove(3)
    assert not tree.remove(99)
    del data[3]
    data[12345] = np.arange(-5.0, 0.0)
    tree.update(12345, sketch_bytes(data[12345]))
    assert tree.height == height
    assert sorted(tree.shards()) == sorted(data)
    assert 3 not in tree
    assert 12345 in tree
    assert_root_matches(tree, data)


def test_one_update_re_merges_only_its_path() -> None:
    options = MergeTreeOptions(4, 4)
    tree = MergeTree(K, options)
    values = np.random.default_rng(3).normal(0.0, 1.0, 500)
    for shard in range(1024):
        tree.update(shard, sketch_bytes(values))
    tree.merged()
    before = tree.merges
    tree.update(517, sketch_bytes(values[:100]))
    assert tree.dirty_nodes == tree.height
    tree.merged()
    # One bottom node (3 merges after the first leaf) and one node per level above (4 each).
    assert tree.merges - before <= 3 + 4 * (tree.height - 1)
    assert tree.dirty_nodes == 0


def test_updates_between_reads_share_the_upper_nodes() -> None:
    options = MergeTreeOptions(4, 4)
    tree = MergeTree(K, options)
    values = np.random.default_rng(4).normal(0.0, 1.0, 500)
    for shard in range(1024):
        tree.update(shard, sketch_bytes(values))
    tree.merged()
    before = tree.merges
    for shard in range(1024):
        tree.update(shard, sketch_bytes(values))
    tree.merged()
    # Every node once: 256 bottom nodes of 3 merges, then 64 + 16 + 4 + 1 nodes of 4 merges.
    assert tree.merges - before == 256 * 3 + (64 + 16 + 4 + 1) * 4


def test_empty_sketches_and_a_different_k_merge_cleanly() -> None:
    tree = MergeTree(K, MergeTreeOptions(2, 2))
    tree.update(0, sketch_bytes(np.empty(0)))
    assert tree.merged().is_empty()
    data = {0: np.empty(0), 1: np.arange(1.0, 1001.0), 2: np.arange(5000.0, 5100.0)}
    tree.update(1, sketch_bytes(data[1], k=128))  # the node must not take this leaf's k
    tree.update(2, sketch_bytes(data[2]))
    assert tree.merged().k == K
    assert_root_matches(tree, data)


def test_an_empty_tree_gives_an_empty_sketch_of_its_k() -> None:
    merged = MergeTree(K).merged()
    assert merged.is_empty()
    assert merged.k == K


def test_fan_outs_below_two_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        MergeTreeOptions(1, 8)


# --- GlobalEstimator on the tree ------------------------------------------------------------


def snapshot(shard: int, values: npt.NDArray[np.float64], offset: int, ts: int = 1) -> SketchSnapshot:
    state = ShardState.empty(shard, 200)
    state.apply(values, offset)
    return SketchSnapshot.from_bytes(SketchSnapshot.from_state(state, ts=ts).to_bytes())


def test_estimator_n_is_a_running_sum_through_replacements_and_forgets() -> None:
    rng = np.random.default_rng(5)
    estimator = GlobalEstimator(200, (0.5,), MergeTreeOptions(2, 2))
    counts: dict[int, int] = {}
    for offset in range(1, 200):
        shard = int(rng.integers(0, 12)) * 7
        if shard in counts and rng.random() < 0.2:
            estimator.forget(shard)
            del counts[shard]
        else:
            size = int(rng.integers(0, 400))
            assert estimator.offer(snapshot(shard, rng.normal(size=size), offset))
            counts[shard] = size
        assert estimator.n == sum(counts.values())
        assert estimator.shard_count == len(counts)
    assert int(estimator.merged_sketch().n) == sum(counts.values())
    assert [s.shard for s in estimator.shards()] == sorted(counts)


def test_a_refused_stale_snapshot_changes_neither_n_nor_the_merge() -> None:
    estimator = GlobalEstimator(200, (0.5,))
    assert estimator.offer(snapshot(4, np.arange(100.0), offset=10))
    assert not estimator.offer(snapshot(4, np.arange(7.0), offset=9))
    assert estimator.n == 100
    assert int(estimator.merged_sketch().n) == 100


def test_stale_shards_are_reported_and_kept_in_the_estimate() -> None:
    estimator = GlobalEstimator(200, (0.5,))
    for shard, ts in ((0, 1_000), (5, 9_000), (9, 4_999), (2, 5_000)):
        estimator.offer(snapshot(shard, np.arange(10.0), offset=1, ts=ts))
    assert estimator.stale_shards(now_ms=10_000, max_age_ms=5_000) == [0, 9]
    assert estimator.stale_shards(now_ms=10_000, max_age_ms=60_000) == []
    assert estimator.n == 40
    assert int(estimator.merged_sketch().n) == 40
