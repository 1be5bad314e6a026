"""Merging the latest snapshot of every shard into the global estimate.

KLL sketches are mergeable: the merge of sketches of disjoint streams is a
sketch of their union with the same error guarantee as one sketch fed the whole
stream (Karnin, Lang, Liberty 2016). So the global estimate keeps only the
latest snapshot of each shard and merges them; ``n`` is the exact sum of the
shards' counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import datasketches

from pipeline.core.sketch import quantile_band
from pipeline.core.wire import MedianRecord, QuantileEstimate, SketchSnapshot

__all__ = ["GlobalEstimator", "ShardView"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardView:
    """What the aggregator knows of one shard: its latest snapshot, decoded once."""

    snapshot: SketchSnapshot
    """The latest snapshot received."""
    sketch: datasketches.kll_doubles_sketch
    """The snapshot's sketch, deserialized."""


class GlobalEstimator:
    """Holds the latest snapshot per shard and produces the global record."""

    def __init__(self, k: int, quantiles: Sequence[float]) -> None:
        self._k = k
        self._quantiles = tuple(quantiles)
        self._shards: dict[int, ShardView] = {}
        self._merged: datasketches.kll_doubles_sketch | None = None

    @property
    def shard_count(self) -> int:
        """Shards with a snapshot."""
        return len(self._shards)

    @property
    def n(self) -> int:
        """The exact number of numbers across all shards."""
        return sum(view.snapshot.n for view in self._shards.values())

    def shards(self) -> Iterable[SketchSnapshot]:
        """The latest snapshot of every shard, by shard id."""
        return (self._shards[shard].snapshot for shard in sorted(self._shards))

    def offer(self, snapshot: SketchSnapshot) -> bool:
        """Take a snapshot if it is newer than the one held; return whether it was taken.

        Snapshots of one shard can arrive out of order after a rebalance (the old
        owner's last snapshot may land after the new owner's first). A shard's
        offset only grows, so the higher ``last_offset`` is the newer state.
        """
        held = self._shards.get(snapshot.shard)
        if held is not None and (snapshot.last_offset, snapshot.n) < (held.snapshot.last_offset, held.snapshot.n):
            logger.debug("dropping stale snapshot of shard %d at offset %d", snapshot.shard, snapshot.last_offset)
            return False
        self._shards[snapshot.shard] = ShardView(snapshot, snapshot.sketch())
        self._merged = None
        return True

    def forget(self, shard: int) -> None:
        """Drop a shard (its snapshot was deleted with a tombstone)."""
        if self._shards.pop(shard, None) is not None:
            self._merged = None

    def merged_sketch(self) -> datasketches.kll_doubles_sketch:
        """The union of every shard's sketch (cached until the next change)."""
        if self._merged is None:
            merged = datasketches.kll_doubles_sketch(self._k)
            for view in self._shards.values():
                if not view.sketch.is_empty():
                    merged.merge(view.sketch)
            self._merged = merged
        return self._merged

    def record(self, ts: int) -> MedianRecord:
        """The global estimate as a ``medians`` record."""
        merged = self.merged_sketch()
        error = float(merged.normalized_rank_error(False))
        quantiles = tuple(QuantileEstimate(q, quantile_band(merged, q, error)) for q in self._quantiles)
        return MedianRecord(
            n=self.n,
            shards=self.shard_count,
            median=quantile_band(merged, 0.5, error),
            rank_error=error,
            quantiles=quantiles,
            ts=ts,
            rejected=sum(view.snapshot.rejected for view in self._shards.values()),
        )
