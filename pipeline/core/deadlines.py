"""Deadlines per shard, so that a timer tick costs what is due, not what exists.

A worker may own thousands of shards, nearly all of them idle at any moment. The
shard service's flush timer used to look at every owned shard on every tick (and
every shard re-checked its budget on every ``medians`` record). Here each shard
has one deadline, the time its rule may next say "send" without new input (an
idle flush, an interval, a heartbeat), kept in a min-heap: a tick pops only the
due ones.

* :class:`Deadlines`: one deadline per key in a heap. Changing a key's deadline
  pushes a new entry and leaves the old one behind, skipped when it surfaces
  (lazy deletion); the heap is rebuilt when stale entries outnumber live ones, so
  its size stays within twice the keys and a change costs O(log n) amortised.
* :class:`FlushSchedule`: what one tick of the shard service looks at. Due
  deadlines; shards newly assigned whose restored state is still to be announced
  (a bounded number per tick, so a takeover of 10,000 shards never makes one long
  tick, yet every one is announced); and, after a newer ``medians`` record, the
  shards with unsent numbers: only those can fall over their budget when the
  served value moves (a shard with nothing unsent has nothing to send). These
  re-checks too are taken a bounded number per tick, first queued first checked.

Why a deferred re-check keeps the budget's guarantee (:mod:`pipeline.core.budget`).
The guarantee is about numbers: a shard sends before its unsent numbers could move a
served quantile's rank by more than its share of theta, for the latest record it has
seen. Every batch of new numbers is checked at once, in the agent, against the newest
record this worker has read (whatever the re-check queue holds), and a shard so
checked leaves the queue. So a shard still waiting in the queue is one whose unsent
numbers are exactly those it had when the record was noted: waiting changes neither
what it would send nor lets a single number past the check; it only delays, by a
bounded time, its reaction to the served value moving, which the shard could see
only once the record reached it anyway. The bound: the queue is FIFO and holds each
shard at most once, so when a record is noted at most S shards (those this worker
owns) are ahead of any of them, and each tick takes ``recheck_per_tick``: every
shard with unsent numbers is checked against a record within ceil(S /
recheck_per_tick) ticks of the tick that noted it (ticks skipped while the worker
rebalances aside), against that record or a newer one (it takes the newest when
looked at). With the default 200 per tick and a 50 ms tick that is 0.5 s at 2,048
shards and 2.5 s at 10,000, like the announcements after a takeover.

Pure logic, no Faust: the service feeds it what happened and asks it what to look at.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from dataclasses import dataclass

__all__ = ["Deadlines", "FlushSchedule", "TickPlan"]

logger = logging.getLogger(__name__)

# Stale heap entries tolerated beyond the live ones before a rebuild (a rebuild is O(n),
# paid for by at least as many pushes since the last one).
_SLACK = 64


class Deadlines:
    """One deadline (epoch ms) per shard; pop the due ones in order of their deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []
        self._at: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def get(self, key: int) -> int | None:
        """The deadline of ``key`` (None: none set)."""
        return self._at.get(key)

    def set(self, key: int, at_ms: int | None) -> None:
        """Make ``at_ms`` the deadline of ``key``, replacing any earlier one (None: no deadline)."""
        if at_ms is None:
            self.discard(key)
            return
        if self._at.get(key) == at_ms:
            return
        self._at[key] = at_ms
        heapq.heappush(self._heap, (at_ms, key))
        if len(self._heap) > 2 * len(self._at) + _SLACK:
            self._rebuild()

    def discard(self, key: int) -> None:
        """Drop the deadline of ``key`` (its heap entry goes when it surfaces, or at a rebuild)."""
        self._at.pop(key, None)

    def next_ms(self) -> int | None:
        """The earliest deadline (None: none)."""
        self._drop_stale_top()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ms: int, limit: int | None = None) -> list[int]:
        """Remove and return the keys due at ``now_ms`` (deadline <= now), earliest first, at most ``limit``.

        Keys beyond ``limit`` stay due for the next call. A popped key has no deadline
        until it is :meth:`set` again.
        """
        due: list[int] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms and (limit is None or len(due) < limit):
            at_ms, key = heapq.heappop(heap)
            if self._at.get(key) == at_ms:
                del self._at[key]
                due.append(key)
        return due

    def _drop_stale_top(self) -> None:
        heap = self._heap
        while heap and self._at.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)

    def _rebuild(self) -> None:
        self._heap = [(at_ms, key) for key, at_ms in self._at.items()]
        heapq.heapify(self._heap)


@dataclass(frozen=True)
class TickPlan:
    """The shards one tick looks at, in this order."""

    recheck: tuple[int, ...]
    """Shards with unsent numbers, after a newer ``medians`` record (each may be over budget now)."""
    announce: tuple[int, ...]
    """Newly assigned shards whose stored state is to be read and announced."""
    due: tuple[int, ...]
    """Shards whose deadline passed (idle flush, interval, heartbeat)."""


class FlushSchedule:
    """What the shard service's timer looks at on each tick: a cost that follows change.

    The service reports every evaluation of a shard with :meth:`touched` (its rule's
    next deadline and whether something is unsent), assignments and revocations, and
    each newer ``medians`` record (:meth:`new_record`); :meth:`plan` says what a tick
    must look at. A planned shard that is still owned must be evaluated and then
    :meth:`touched` again, or it keeps no deadline.
    """

    def __init__(self, per_tick: int = 500, recheck_per_tick: int | None = None) -> None:
        recheck_per_tick = per_tick if recheck_per_tick is None else recheck_per_tick
        if min(per_tick, recheck_per_tick) < 1:
            raise ValueError(f"per_tick and recheck_per_tick must be at least 1, got {per_tick}, {recheck_per_tick}")
        self._per_tick = per_tick
        self._recheck_per_tick = recheck_per_tick
        self._deadlines = Deadlines()
        self._unsent: set[int] = set()
        self._to_announce: set[int] = set()
        self._announce_queue: deque[int] = deque()
        # Shards to re-check against a newer record: the set says who, the queue in which order
        # (an entry whose shard left the set, checked by a batch or revoked, is skipped).
        self._to_recheck: set[int] = set()
        self._recheck_queue: deque[int] = deque()

    @property
    def per_tick(self) -> int:
        """At most this many announcements, and this many due shards, per tick."""
        return self._per_tick

    @property
    def recheck_per_tick(self) -> int:
        """At most this many re-checks against a newer record per tick."""
        return self._recheck_per_tick

    @property
    def pending_rechecks(self) -> int:
        """Shards still to be re-checked against the newest record."""
        return len(self._to_recheck)

    @property
    def unsent(self) -> frozenset[int]:
        """Shards with something unsent (a copy)."""
        return frozenset(self._unsent)

    @property
    def pending_announcements(self) -> int:
        """Newly assigned shards not announced yet."""
        return len(self._to_announce)

    def deadline(self, shard: int) -> int | None:
        """The next deadline of ``shard`` (None: none)."""
        return self._deadlines.get(shard)

    def assigned(self, shard: int) -> None:
        """``shard`` is ours now: announce its stored state on a coming tick (first come, first announced)."""
        if shard not in self._to_announce:
            self._to_announce.add(shard)
            self._announce_queue.append(shard)

    def revoked(self, shard: int) -> None:
        """``shard`` is no longer ours: forget it (its queue and heap entries are skipped later)."""
        self._to_announce.discard(shard)
        self._unsent.discard(shard)
        self._to_recheck.discard(shard)
        self._deadlines.discard(shard)
        if not self._to_announce:
            self._announce_queue.clear()
        if not self._to_recheck:
            self._recheck_queue.clear()

    def touched(self, shard: int, due_ms: int | None, unsent: bool) -> None:
        """``shard`` was just evaluated (against the newest record): its rule's next deadline, and
        whether something is unsent. It needs no re-check until the next :meth:`new_record`."""
        self._to_recheck.discard(shard)
        self._deadlines.set(shard, due_ms)
        if unsent:
            self._unsent.add(shard)
        else:
            self._unsent.discard(shard)

    def announced(self, shard: int) -> None:
        """``shard``'s state was read before its turn (its first batch came first): no announcement."""
        self._to_announce.discard(shard)

    def new_record(self) -> None:
        """A newer ``medians`` record: the shards with unsent numbers are queued for a re-check.

        One already queued keeps its place (it takes the newest record when its turn
        comes), so the queue never holds a shard twice and never outgrows the shards.
        """
        fresh = self._unsent - self._to_recheck
        self._to_recheck |= fresh
        self._recheck_queue.extend(fresh)

    def plan(self, now_ms: int) -> TickPlan:
        """The shards to look at on the tick at ``now_ms`` (popping the due, announced and re-checked ones)."""
        recheck = _take(self._recheck_queue, self._to_recheck, self._recheck_per_tick)
        announce = _take(self._announce_queue, self._to_announce, self._per_tick)
        due = self._deadlines.pop_due(now_ms, self._per_tick)
        return TickPlan(recheck, announce, tuple(due))


def _take(queue: deque[int], members: set[int], limit: int) -> tuple[int, ...]:
    """Up to ``limit`` shards from the front of ``queue`` that are still in ``members`` (leaving it)."""
    taken: list[int] = []
    while queue and len(taken) < limit:
        shard = queue.popleft()
        if shard in members:
            members.discard(shard)
            taken.append(shard)
    return tuple(taken)
