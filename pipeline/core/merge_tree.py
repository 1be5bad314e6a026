"""A merge tree over shard sketches: one shard's new snapshot re-merges only its path.

The leaves are shard slots holding each shard's serialized KLL sketch; every
internal node holds the KLL merge of its children. A leaf update or removal
marks its path to the root dirty, and dirty nodes are re-merged bottom-up only
when the merged sketch is asked for (at publish time). So one update costs
O(log S) merges, and the many updates that arrive between two publishes share
the upper nodes: with every shard updated once per publish, the tree does about
one merge per update, the least a merge of all S sketches can do. (Once a fifth
or more of the shards change between two publishes, almost every node is dirty
and a publish costs about S merges, as a flat merge would.)

Why leaves keep bytes, not sketches: the held snapshot already carries the
serialized sketch, and deserializing it again when its parent is re-merged costs
about half a microsecond, against about 9 for the merge itself; a live C++
sketch per leaf would add about 5 KB per shard. Every internal node is a live
sketch, so fan-outs of 8 keep them to about one per 7 shards. The measured
costs behind the defaults are in ``scripts/bench_aggregator.py``.

KLL merging is associative in its guarantee: a sketch merged through any tree
of merges has the error bound of one KLL sketch of the union with the same k, so
the tree serves the same bound as a flat merge of all shards.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import datasketches

__all__ = ["MergeTree", "MergeTreeOptions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeTreeOptions:
    """The shape of the tree."""

    # 8 and 8, from scripts/bench_aggregator.py at 10,000 shards: internal sketches
    # cost 0.8 KB per shard (6.5 KB in all). 4x4 was a little faster at 2,000
    # updates per publish but took 7.6 KB per shard, a binary tree 11 KB; a bottom
    # fan-out of 16 saved 0.4 KB but cost 1.5-2x as much at 100-200 updates per publish.
    leaf_fanout: int = 8
    """Leaves under one bottom node; each bottom node is a held sketch, so wider saves memory."""
    node_fanout: int = 8
    """Children of every node above the bottom level."""

    def __post_init__(self) -> None:
        if self.leaf_fanout < 2 or self.node_fanout < 2:
            raise ValueError(f"fan-outs must be at least 2, got {self.leaf_fanout} and {self.node_fanout}")


class MergeTree:
    """Shard id -> serialized KLL sketch, with the merge of them all kept up to date lazily.

    Shard ids are any non-negative ints (sparse is fine), or edge shards' names
    (str): each gets a slot, and a
    removed shard's slot is reused by the next new shard, lowest first, so the
    leaves stay dense. The tree grows a level when the slots outgrow it.
    """

    def __init__(self, k: int, options: MergeTreeOptions | None = None) -> None:
        self._k = k
        self._options = options or MergeTreeOptions()
        self._slot_of: dict[int | str, int] = {}
        self._free_slots: list[int] = []  # a heap
        self._leaves: list[bytes | None] = []
        # _levels[0] sits above the leaves; the last level holds the root once it has one node.
        self._levels: list[list[datasketches.kll_doubles_sketch | None]] = []
        self._dirty: list[set[int]] = []
        self.merges = 0
        """Sketch merges done so far (for benchmarks)."""

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, shard: object) -> bool:
        return shard in self._slot_of

    def shards(self) -> Iterator[int | str]:
        """The shard ids held, in no particular order."""
        return iter(self._slot_of)

    @property
    def height(self) -> int:
        """Levels of internal nodes (0 before the first shard)."""
        return len(self._levels)

    @property
    def dirty_nodes(self) -> int:
        """Internal nodes waiting to be re-merged at the next :meth:`merged`."""
        return sum(len(dirty) for dirty in self._dirty)

    def update(self, shard: int | str, sketch_bytes: bytes) -> None:
        """Set a shard's sketch (the standard DataSketches KLL serialization).

        The bytes are trusted to deserialize (snapshots are validated when decoded);
        they are deserialized only when their bottom node is next re-merged.
        """
        slot = self._slot_of.get(shard)
        if slot is None:
            if self._free_slots:
                slot = heapq.heappop(self._free_slots)
            else:
                slot = len(self._leaves)
                self._leaves.append(None)
                self._grow()
            self._slot_of[shard] = slot
        self._leaves[slot] = sketch_bytes
        self._mark_path(slot)

    def remove(self, shard: int | str) -> bool:
        """Drop a shard; return whether it was held."""
        slot = self._slot_of.pop(shard, None)
        if slot is None:
            return False
        self._leaves[slot] = None
        heapq.heappush(self._free_slots, slot)
        self._mark_path(slot)
        return True

    def merged(self) -> datasketches.kll_doubles_sketch:
        """The merge of every shard's sketch, re-merging the dirty nodes first.

        The returned sketch belongs to the tree: read it, do not update it.
        """
        self._flush()
        root = self._levels[-1][0] if self._levels else None
        return root if root is not None else datasketches.kll_doubles_sketch(self._k)

    def _grow(self) -> None:
        """Add the nodes (and levels) the leaves now need; a new leaf adds at most one per level."""
        width = len(self._leaves)
        fanout = self._options.leaf_fanout
        level = 0
        while True:
            needed = -(-width // fanout)
            if level == len(self._levels):
                self._levels.append([])
                self._dirty.append(set())
            nodes = self._levels[level]
            nodes.extend([None] * (needed - len(nodes)))
            if needed == 1:
                return
            width, fanout, level = needed, self._options.node_fanout, level + 1

    def _mark_path(self, slot: int) -> None:
        # Invariant: a dirty node's ancestors are all dirty, so a walk may stop at
        # the first dirty node. That is what makes many updates between two
        # publishes cheap: they share the upper part of their paths. Growth keeps
        # it: nodes are added only on the new last leaf's path, from the bottom up
        # (a new top level included), so an existing node never gets a new parent.
        index = slot // self._options.leaf_fanout
        for dirty in self._dirty:
            if index in dirty:
                return
            dirty.add(index)
            index //= self._options.node_fanout

    def _flush(self) -> None:
        for level, dirty in enumerate(self._dirty):
            if not dirty:
                continue
            nodes = self._levels[level]
            for index in dirty:
                nodes[index] = self._merge_leaves(index) if level == 0 else self._merge_nodes(level, index)
            dirty.clear()

    def _merge_leaves(self, index: int) -> datasketches.kll_doubles_sketch | None:
        fanout = self._options.leaf_fanout
        merged = None
        for data in self._leaves[index * fanout : (index + 1) * fanout]:
            if data is None:
                continue
            sketch = datasketches.kll_doubles_sketch.deserialize(data)
            if sketch.is_empty():
                continue
            if merged is None:
                if sketch.k == self._k:
                    merged = sketch  # freshly deserialized, ours: it becomes the node
                    continue
                merged = datasketches.kll_doubles_sketch(self._k)
            merged.merge(sketch)
            self.merges += 1
        return merged

    def _merge_nodes(self, level: int, index: int) -> datasketches.kll_doubles_sketch | None:
        fanout = self._options.node_fanout
        merged = None
        for child in self._levels[level - 1][index * fanout : (index + 1) * fanout]:
            if child is None:
                continue
            if merged is None:
                merged = datasketches.kll_doubles_sketch(self._k)
            merged.merge(child)
            self.merges += 1
        return merged
