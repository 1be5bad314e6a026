"""The worker's garbage-collection policy: scheduled young collections, no automatic ones.

CPython's automatic collector runs a young-generation pass every 700 container
allocations. The batch path allocates a container per fetched record (the
records, the batch's columns), and each pass walks every young container,
including the half-built lists of the batch in hand, so the collector, not the
work, became the largest cost of a worker: measured here with single-number
messages, one worker took 266,000 msgs/s with raised thresholds and 627,000 with
the collector off (scripts/bench_throughput.py; BENCHMARKS.md).

Almost nothing the pipeline allocates forms reference cycles (reference counting
frees it), so instead: everything alive once the app is built is frozen into the
permanent generation (never walked again), automatic collection is off, and a
Faust timer runs a young collection every ``interval_ms`` and a full one every
``full_every`` ticks, so cycles that do form (asyncio tasks and exceptions) are
reclaimed within a second and memory stays flat.
"""

from __future__ import annotations

import atexit
import gc
import logging
import time

from faust.types import AppT

__all__ = ["CollectorPolicy"]

logger = logging.getLogger(__name__)

# A pass longer than this is worth a log line: it delays every agent.
_SLOW_PASS_S = 0.05


class CollectorPolicy:
    """Replaces CPython's automatic collection by scheduled passes (see module docs)."""

    def __init__(self, app: AppT, interval_ms: int, full_every: int = 60) -> None:
        self._app = app
        self._interval_s = interval_ms / 1000
        self._full_every = full_every
        self._ticks = 0
        self.passes = 0
        """Scheduled passes run so far."""
        self.longest_pass_ms = 0.0
        """The longest scheduled pass, milliseconds."""

    def register(self) -> None:
        """Attach the policy to the app: it takes effect when the worker starts."""
        if self._interval_s <= 0:
            return  # the setting's 0: keep CPython's automatic collector
        self._app.task(self._take_over)
        self._app.timer(self._interval_s, name="collector.tick")(self._tick)

    async def _take_over(self) -> None:
        # At worker start, not at app build: a process that only builds the app
        # (a test, a CLI command) keeps its automatic collector.
        gc.collect()
        gc.freeze()
        gc.disable()
        # At exit, hand everything back to the collector: objects left frozen look
        # leaked to native extensions (nanobind reports them on every shutdown).
        atexit.register(_restore_automatic_collection)
        logger.info("garbage collection: scheduled every %.0f ms, %d objects frozen",
                    self._interval_s * 1000, gc.get_freeze_count())  # fmt: skip

    async def _tick(self) -> None:
        self._ticks += 1
        generation = 2 if self._ticks % self._full_every == 0 else 1
        started = time.perf_counter()
        gc.collect(generation)
        took = time.perf_counter() - started
        self.passes += 1
        self.longest_pass_ms = max(self.longest_pass_ms, took * 1000)
        if took > _SLOW_PASS_S:
            logger.warning("garbage collection (generation %d) took %.0f ms", generation, took * 1000)


def _restore_automatic_collection() -> None:
    gc.unfreeze()
    gc.enable()
    gc.collect()
