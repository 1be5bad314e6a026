"""The aggregator's state and its one step per ``sketches`` record, pure.

:class:`AggregateState` is what the aggregator holds: the merge of every shard's
latest snapshot (partition shards and edge shards), the partition shards'
liveness notes and the edge shards' ledger. :meth:`AggregateState.take` reads one
record through the topic's contract and applies it, or raises
:class:`~pipeline.core.wire.SnapshotError` naming why not; a refused record
changes nothing. The Faust agent (:mod:`pipeline.app.aggregator`) calls it for
every record and dead-letters the refusals, so the property tests of this module
test the agent's own path. No Kafka, no Faust.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.core.liveness import ShardLiveness
from pipeline.core.merge import GlobalEstimator
from pipeline.core.sketches_contract import SnapshotLimits, Tombstone, accept
from pipeline.core.source_contract import SOURCE_KEY_PREFIX, SourceBook, SourcePolicy, SourceTombstone, is_source_key
from pipeline.core.source_wire import SourceProgress, SourceSnapshot
from pipeline.core.wire import MedianRecord, ShardProgress, SketchSnapshot

__all__ = ["AggregateState", "Taken"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Taken:
    """What one accepted record did."""

    changed: bool
    """The estimate changed (a record is due)."""
    urgent: bool = False
    """A budget snapshot: publish at once."""


_UNCHANGED = Taken(False)


@dataclass
class AggregateState:
    """The aggregator's state: the estimate, the shards' liveness and the edge shards' ledger."""

    estimator: GlobalEstimator
    """The merge of the latest snapshot of every shard."""
    sources: SourceBook
    """The edge shards' ledger: sequence numbers, rates, the cap."""
    liveness: ShardLiveness = field(default_factory=ShardLiveness)
    """The partition shards' progress and silence."""

    @classmethod
    def empty(cls, k: int, quantiles: Sequence[float], policy: SourcePolicy) -> AggregateState:
        """A state with nothing in it."""
        return cls(GlobalEstimator(k, quantiles), SourceBook(policy))

    def take(self, key: bytes | None, value: bytes | None, limits: SnapshotLimits, now_ms: int) -> Taken:
        """Check one ``sketches`` record and apply it; :class:`SnapshotError` (nothing changed) if refused."""
        message = accept(key, value, limits, self.sources.policy)
        if isinstance(message, SourceSnapshot | SourceProgress) and not self.sources.admit(message, now_ms):
            return _UNCHANGED  # an edge shard's state sent again: sequence numbers make it a no-op
        if isinstance(message, Tombstone | SourceTombstone):
            return self._retire(message)
        if isinstance(message, ShardProgress):
            self.liveness.note_progress(message)
            return _UNCHANGED
        if isinstance(message, SourceProgress):
            return _UNCHANGED  # the ledger took its counts
        if isinstance(message, SketchSnapshot):
            self.liveness.note_snapshot(message)
            taken = self.estimator.offer(message)  # not if older than the one held (a rebalance's late one)
        else:
            self.estimator.offer_source(message)  # the ledger found it newer
            taken = True
        # A budget snapshot resets what the shard vouches for: publish it at once.
        return Taken(taken, taken and message.urgent)

    def _retire(self, message: Tombstone | SourceTombstone) -> Taken:
        # A tombstone retires a shard: its numbers leave the estimate (one of a
        # progress key only drops a heartbeat, which no record counts apart).
        if message.progress:
            return _UNCHANGED
        if isinstance(message, SourceTombstone):
            self.sources.retire(message.source)
            return Taken(self.estimator.forget_source(message.source))
        self.estimator.forget(message.shard)
        self.liveness.forget(message.shard)
        return Taken(True)

    def held_value(self, key: bytes | None) -> bytes | None:
        """The held snapshot to write back under ``key`` after a refusal there (None: none to restore).

        ``sketches`` is compacted: it keeps the last record written under a key, so a
        refused record (a forgery, a sequence number going back) written after an edge
        shard's snapshot would leave a rebuild without it. Written back, the held
        snapshot is the last again; the agent reads it as the same snapshot (a no-op).
        Only edge shards' keys: only the workers may write partition shards' keys (ACLs).
        """
        if not is_source_key(key) or key is None or key.endswith(b".progress"):
            return None
        name = key[len(SOURCE_KEY_PREFIX) :].decode("ascii", "replace")
        held = self.estimator.source(name)
        return None if held is None else held.to_bytes()

    def record(self, now_ms: int, theta: float | None, stale_after_ms: int) -> MedianRecord:
        """The global record now (``stale_after_ms``: the silence after which a shard is stale)."""
        return self.estimator.record(
            now_ms,
            theta,
            self.liveness.pending() + self.sources.pending(),
            self.liveness.stale_count(now_ms, stale_after_ms),
            len(self.sources.stale(now_ms, stale_after_ms)),
        )
