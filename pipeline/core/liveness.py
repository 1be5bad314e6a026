"""What the aggregator knows of the shards' progress: numbers not yet reflected, and silent shards.

Every snapshot and progress message read from ``sketches`` notes its shard as
heard from. A shard sends one of them at least every heartbeat, so a shard silent
for longer is stale. Both answers the aggregator needs on each publish cost what
changed, not the shards that exist: the pending total is kept up to date message
by message, and the shards are split in two by when they were last heard from,
each part a heap (:class:`~pipeline.core.deadlines.Deadlines`): the fresh ones
(oldest first) and the stale ones (newest first). A question moves only the
shards that crossed its cutoff since the last one, from the front of one heap to
the other, and the stale count is the stale part's size. A stopped worker's
10,000 silent shards are moved once, when they go stale, not re-filed on every
publish while they stay stale (as a single heap popped and refilled did).
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
        # Every known shard is in exactly one: fresh keyed by last_seen_ms (oldest first),
        # stale keyed by -last_seen_ms (newest first), split at the last cutoff asked.
        self._fresh = Deadlines()
        self._stale = Deadlines()
        self._stale_ids: set[int] = set()  # the stale part's shards, for the listing

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
            self._fresh.discard(shard)
            self._stale.discard(shard)
            self._stale_ids.discard(shard)

    def pending(self) -> int:
        """Numbers the shards reported ingesting that no snapshot held reflects yet (O(1))."""
        return self._pending

    def stale(self, now_ms: int, max_age_ms: int) -> list[int]:
        """Shards not heard from (snapshot or heartbeat) for longer than ``max_age_ms``, by id.

        A listing, O(stale log stale) for its sort: for the views. A publish needs
        only :meth:`stale_count`.
        """
        self._split(now_ms - max_age_ms - 1)
        return sorted(self._stale_ids)

    def stale_count(self, now_ms: int, max_age_ms: int) -> int:
        """How many shards :meth:`stale` would list, for a publish.

        O(crossed log n), crossed being the shards that went silent or were heard from
        again since the last question: not the shards that stay stale.
        """
        self._split(now_ms - max_age_ms - 1)
        return len(self._stale_ids)

    def _split(self, cutoff: int) -> None:
        """Make stale exactly the shards last seen at or before ``cutoff`` (stale: now - last_seen > max_age)."""
        # A cutoff earlier than the last one (a longer age): the newest stale ones are fresh again.
        for shard in self._stale.pop_due(-(cutoff + 1)):
            self._stale_ids.discard(shard)
            self._fresh.set(shard, self._shards[shard].last_seen_ms)
        for shard in self._fresh.pop_due(cutoff):
            self._stale_ids.add(shard)
            self._stale.set(shard, -self._shards[shard].last_seen_ms)

    def _begin(self, shard: int) -> _ShardSeen:
        seen = self._shards.get(shard)
        if seen is None:
            seen = self._shards[shard] = _ShardSeen()
        self._pending -= seen.pending
        return seen

    def _end(self, shard: int, seen: _ShardSeen, ts: int) -> None:
        self._pending += seen.pending
        if ts > seen.last_seen_ms or shard not in self._stale_ids:
            # Heard from anew: fresh until a question's cutoff says otherwise (an older
            # message leaves a stale shard where it is).
            seen.last_seen_ms = max(seen.last_seen_ms, ts)
            self._stale.discard(shard)
            self._stale_ids.discard(shard)
            self._fresh.set(shard, seen.last_seen_ms)
