"""What the aggregator knows of the shards' progress: numbers not yet reflected, and silent shards.

Every snapshot and progress message read from ``sketches`` notes its shard as
heard from. A shard sends one of them at least every heartbeat, so a shard silent
for longer is stale. Both answers the aggregator needs on each publish cost what
changed, not the shards that exist: the pending total is kept up to date message
by message, and the shards are kept in a min-heap by when they were last heard
from (:class:`~pipeline.core.deadlines.Deadlines`), so the stale ones come from its
front in O(stale log n).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.core.deadlines import Deadlines
from pipeline.core.wire import ShardProgress, SketchSnapshot

__all__ = ["ShardLiveness"]

logger = logging.getLogger(__name__)


@dataclass
class _ShardSeen:
    """The aggregator's notes on one shard."""

    reflected_n: int = 0
    reflected_offset: int = -1
    ingested: int = 0
    ingested_offset: int = -1
    last_seen_ms: int = 0

    @property
    def pending(self) -> int:
        return max(self.ingested - self.reflected_n, 0)


class ShardLiveness:
    """The aggregator's view of the shards' progress: numbers not yet reflected, and silent shards.

    Fed with every snapshot and progress message read from ``sketches``. A shard
    sends at least one of them every heartbeat, so a shard silent for longer is stale.
    """

    def __init__(self) -> None:
        self._shards: dict[int, _ShardSeen] = {}
        self._pending = 0
        self._last_seen = Deadlines()

    def note_snapshot(self, snapshot: SketchSnapshot) -> None:
        """A snapshot reflects everything its shard ingested up to its offset."""
        seen = self._begin(snapshot.shard)
        if snapshot.last_offset >= seen.reflected_offset:
            seen.reflected_n, seen.reflected_offset = snapshot.n, snapshot.last_offset
        if snapshot.last_offset >= seen.ingested_offset:
            seen.ingested, seen.ingested_offset = snapshot.n, snapshot.last_offset
        self._end(snapshot.shard, seen, snapshot.ts)

    def note_progress(self, progress: ShardProgress) -> None:
        """A heartbeat: how far the shard has ingested, beyond its last snapshot."""
        seen = self._begin(progress.shard)
        if progress.last_offset >= seen.ingested_offset:
            seen.ingested, seen.ingested_offset = progress.ingested, progress.last_offset
        self._end(progress.shard, seen, progress.ts)

    def forget(self, shard: int) -> None:
        """Drop a retired shard."""
        seen = self._shards.pop(shard, None)
        if seen is not None:
            self._pending -= seen.pending
            self._last_seen.discard(shard)

    def pending(self) -> int:
        """Numbers the shards reported ingesting that no snapshot held reflects yet (O(1))."""
        return self._pending

    def stale(self, now_ms: int, max_age_ms: int) -> list[int]:
        """Shards not heard from (snapshot or heartbeat) for longer than ``max_age_ms``, by id.

        The stale ones are popped from the heap's front and put back: O(stale log n).
        """
        cutoff = now_ms - max_age_ms - 1  # stale: now - last_seen > max_age, i.e. last_seen <= cutoff
        stale = self._last_seen.pop_due(cutoff)
        for shard in stale:
            self._last_seen.set(shard, self._shards[shard].last_seen_ms)
        return sorted(stale)

    def _begin(self, shard: int) -> _ShardSeen:
        seen = self._shards.get(shard)
        if seen is None:
            seen = self._shards[shard] = _ShardSeen()
        self._pending -= seen.pending
        return seen

    def _end(self, shard: int, seen: _ShardSeen, ts: int) -> None:
        self._pending += seen.pending
        seen.last_seen_ms = max(seen.last_seen_ms, ts)
        self._last_seen.set(shard, seen.last_seen_ms)
