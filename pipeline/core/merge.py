"""Merging the latest snapshot of every shard into the global estimate.

KLL sketches are mergeable: the merge of sketches of disjoint streams is a
sketch of their union with the same error guarantee as one sketch fed the whole
stream (Karnin, Lang, Liberty 2016). So the global estimate keeps only the
latest snapshot of each shard and merges them; ``n`` is the exact sum of the
shards' counts.

The merge goes through a :class:`~pipeline.core.merge_tree.MergeTree`: a new
snapshot re-merges only its path to the root, lazily at the next publish, so the
cost per snapshot grows with log S, not S.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import datasketches

from pipeline.core.merge_tree import MergeTree, MergeTreeOptions
from pipeline.core.sketch import quantile_band
from pipeline.core.sketches_contract import newer_than
from pipeline.core.source_wire import SourceSnapshot
from pipeline.core.wire import MedianRecord, QuantileEstimate, SketchSnapshot

__all__ = ["GlobalEstimator", "ShardView"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShardView:
    """What the aggregator knows of one shard: its latest snapshot.

    The sketch stays serialized (in the snapshot) to keep memory per shard small;
    the merge tree deserializes it when it re-merges the shard's bottom node.
    """

    snapshot: SketchSnapshot
    """The latest snapshot received."""

    def sketch(self) -> datasketches.kll_doubles_sketch:
        """The snapshot's sketch, deserialized anew (a copy the caller owns)."""
        return self.snapshot.sketch()


class GlobalEstimator:
    """Holds the latest snapshot per shard and produces the global record."""

    def __init__(self, k: int, quantiles: Sequence[float], tree: MergeTreeOptions | None = None) -> None:
        self._k = k
        self._quantiles = tuple(quantiles)
        self._shards: dict[int, ShardView] = {}
        self._order: list[int] | None = []  # shard ids sorted; None once a shard comes or goes
        self._tree = MergeTree(k, tree)
        # Edge shards, by name: the tree holds them under their name (str), partition shards under their id (int).
        self._sources: dict[str, SourceSnapshot] = {}
        self._n = 0  # the running sum of the held snapshots' counts
        self._rejected = 0  # and of their rejected counts: a record costs no pass over every shard

    @property
    def shard_count(self) -> int:
        """Partition shards with a snapshot."""
        return len(self._shards)

    @property
    def source_count(self) -> int:
        """Edge shards (sources that sketch their own numbers) with a snapshot."""
        return len(self._sources)

    def sources(self) -> Iterable[SourceSnapshot]:
        """The latest snapshot of every edge shard, by name."""
        return (self._sources[name] for name in sorted(self._sources))

    def source(self, name: str) -> SourceSnapshot | None:
        """The held snapshot of edge shard ``name`` (None: not held)."""
        return self._sources.get(name)

    def offer_source(self, snapshot: SourceSnapshot) -> None:
        """Hold an edge shard's snapshot, replacing the one held (the
        :class:`~pipeline.core.source_contract.SourceBook` decided it is newer)."""
        held = self._sources.get(snapshot.source)
        self._sources[snapshot.source] = snapshot
        self._n += snapshot.n - (held.n if held is not None else 0)
        self._rejected += snapshot.rejected - (held.rejected if held is not None else 0)
        self._tree.update(snapshot.source, snapshot.sketch_bytes)

    def forget_source(self, name: str) -> bool:
        """Drop an edge shard (its tombstone); return whether it was held."""
        held = self._sources.pop(name, None)
        if held is None:
            return False
        self._n -= held.n
        self._rejected -= held.rejected
        self._tree.remove(name)
        return True

    @property
    def merge_tree(self) -> MergeTree:
        """The merge tree behind :meth:`merged_sketch` (for benchmarks and diagnostics; do not modify)."""
        return self._tree

    @property
    def n(self) -> int:
        """The exact number of numbers across all shards (kept as a running sum: O(1))."""
        return self._n

    def shards(self) -> Iterable[SketchSnapshot]:
        """The latest snapshot of every shard, by shard id.

        The ids are sorted again only after a shard came or went, not on every call:
        at 10,000 shards a snapshot replaces one already held, and the views that list
        the shards on each request pay the walk, not a sort.
        """
        if self._order is None:
            self._order = sorted(self._shards)
        shards = self._shards
        return (shards[shard].snapshot for shard in self._order)

    def offer(self, snapshot: SketchSnapshot) -> bool:
        """Take a snapshot if it is newer than the one held; return whether it was taken.

        Newer is the ``sketches`` contract's rule (:func:`~pipeline.core.sketches_contract.newer_than`):
        snapshots of a shard can arrive out of order after a rebalance, and one of
        the state already held is not taken either.
        """
        held = self._shards.get(snapshot.shard)
        if not newer_than(snapshot, held.snapshot if held is not None else None):
            logger.debug("dropping stale snapshot of shard %d at offset %d", snapshot.shard, snapshot.last_offset)
            return False
        if held is None:
            self._order = None
        self._shards[snapshot.shard] = ShardView(snapshot)
        self._n += snapshot.n - (held.snapshot.n if held is not None else 0)
        self._rejected += snapshot.rejected - (held.snapshot.rejected if held is not None else 0)
        self._tree.update(snapshot.shard, snapshot.sketch_bytes)
        return True

    def forget(self, shard: int) -> None:
        """Drop a shard (its snapshot was deleted with a tombstone)."""
        held = self._shards.pop(shard, None)
        if held is not None:
            self._order = None
            self._n -= held.snapshot.n
            self._rejected -= held.snapshot.rejected
            self._tree.remove(shard)

    def merged_sketch(self) -> datasketches.kll_doubles_sketch:
        """The union of every shard's sketch: the tree's root, re-merging only what changed.

        The sketch belongs to the estimator: read it, do not update it.
        """
        return self._tree.merged()

    def stale_shards(self, now_ms: int, max_age_ms: int) -> list[int]:
        """Shards whose latest snapshot is older than ``max_age_ms`` at ``now_ms``, by id.

        Stale shards stay in the estimate: their numbers were seen, and the estimate
        is of everything seen so far. This only reports them (a silent shard is
        idle, or its worker is down).
        """
        oldest_ms = now_ms - max_age_ms
        return sorted(shard for shard, view in self._shards.items() if view.snapshot.ts < oldest_ms)

    def record(
        self, ts: int, theta: float | None = None, pending: int = 0, stale_shards: int = 0, stale_sources: int = 0
    ) -> MedianRecord:
        """The global estimate as a ``medians`` record.

        ``theta`` is the shards' emission budget (None when their rule bounds
        nothing): each quantile's bound is the merged sketch's rank error plus
        theta, and ``lower``/``upper`` are the values at q -+ that bound.
        ``pending`` and ``stale_shards`` come from the shards' progress messages
        (:class:`~pipeline.core.budget.ShardLiveness`).
        """
        merged = self.merged_sketch()
        error = float(merged.normalized_rank_error(False))
        bound = error + (theta or 0.0)
        quantiles = tuple(QuantileEstimate(q, quantile_band(merged, q, bound), bound) for q in self._quantiles)
        return MedianRecord(
            n=self.n,
            shards=self.shard_count,
            median=quantile_band(merged, 0.5, bound),
            rank_error=error,
            quantiles=quantiles,
            ts=ts,
            rejected=self._rejected,
            theta=theta,
            pending=pending,
            stale_shards=stale_shards,
            sources=self.source_count,
            stale_sources=stale_sources,
        )
