"""The order of the batch consumer's fetches, seeks and revocations.

A fetch and a seek's bookkeeping never overlap: a seek starts after a fetch under way
(which could bring records from before the seek), and no batch is fetched or handed
over while a seek runs. The lock is taken only for the consumer's own bookkeeping,
never across the consumer thread's seek: at a rebalance that thread waits for the event
loop's revocation, and a revocation waiting on the lock for the group's whole rebalance
timeout hung a worker (dropped from the group, never rejoining). So a revocation waits
for the lock a bounded time, and a seek that a revocation overtook places nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["REVOKE_LOCK_WAIT_S", "FetchGate"]

logger = logging.getLogger(__name__)

REVOKE_LOCK_WAIT_S = 5.0
"""How long a revocation waits for a fetch's or a seek's bookkeeping before going on without it."""


class FetchGate:
    """The fetch lock, the seeks under way and the revocations seen, of one consumer."""

    def __init__(self, revoke_wait_s: float = REVOKE_LOCK_WAIT_S) -> None:
        self.lock = asyncio.Lock()
        """Held by a fetch, and by a seek's or a revocation's bookkeeping."""
        self._revoke_wait_s = revoke_wait_s
        self._seeks_running = 0
        self._revocations = 0

    @property
    def seeking(self) -> bool:
        """Whether a seek is under way: no batch may be fetched or handed over until it ends."""
        return self._seeks_running > 0

    @asynccontextmanager
    async def seek(self) -> AsyncIterator[int]:
        """Around one seek: starts after a fetch under way; yields the revocation count to pass to :meth:`overtaken`."""
        self._seeks_running += 1
        try:
            async with self.lock:
                revocations = self._revocations
            yield revocations
        finally:
            self._seeks_running -= 1

    def overtaken(self, revocations: int) -> bool:
        """Whether a revocation came after the seek that saw ``revocations`` began (its partitions may be
        another worker's now). Ask while holding :attr:`lock`."""
        return revocations != self._revocations

    def revoked(self) -> None:
        """Count a revocation: every seek under way is overtaken by it."""
        self._revocations += 1

    @asynccontextmanager
    async def locked_for_revocation(self) -> AsyncIterator[None]:
        """Around a revocation's bookkeeping: holds the lock if it comes in time.

        The group waits for the revocation: never for long. Without the lock the bookkeeping
        still runs after any fetch under way if the fetcher runs its calls in order on one
        thread, Faust hands over nothing that fetch brings (its flow is stopped for the
        rebalance), and a seek the revocation overtook places nothing.
        """
        try:
            await asyncio.wait_for(self.lock.acquire(), self._revoke_wait_s)
        except TimeoutError:
            logger.warning("revocation: the fetch lock was held %.0f s; revoking without it", self._revoke_wait_s)
            yield
            return
        try:
            yield
        finally:
            self.lock.release()
