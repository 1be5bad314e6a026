"""The background sender: a thread (or an asyncio task), a producer and a ``medians`` follower for many sources.

Each tick (``tick_ms``) it hands the newest ``medians`` record to every source,
asks each for the message its emission rule wants now, and produces it to
``sketches``. A process that hosts many sources (a service with several
metrics, or the benchmark's simulated fleet) shares one sender: one connection
and one follower, whatever the number of sources. ``add`` and ``add_many`` never
wait for it: they take the source's lock for the length of a sketch update, and
the sender takes it for the length of a serialization.

The producer is idempotent (no duplicate or reordered message on its retries),
and a source's messages all come from this one thread, in order. Each source
keeps to the aggregator's rate (``source_messages_per_s``, ``source_burst``): a
snapshot it may not send yet waits for the next tick, which loses nothing (a
later snapshot carries everything an earlier one did).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Literal

from config import Settings
from pipeline.app.global_view import MediansFollower
from pipeline.core.budget import GlobalView
from pipeline.kafka.clients import producer

if TYPE_CHECKING:
    from pipeline.source.sketching import SketchingSource

__all__ = ["SenderMode", "SnapshotSender"]

logger = logging.getLogger(__name__)

SenderMode = Literal["thread", "asyncio"]


def _now_ms() -> int:
    return int(time.time() * 1000)


class SnapshotSender:
    """Sends the snapshots and heartbeats of the sources registered with it, from a daemon thread."""

    def __init__(
        self, settings: Settings, *, tick_ms: int = 50, follow: bool | None = None, mode: SenderMode = "thread"
    ) -> None:
        self.settings = settings
        """Where to send (``topic_sketches``) and which ``medians`` to follow."""
        self.mode: SenderMode = mode
        """``thread``: ticks in a daemon thread; ``asyncio``: in a task on the event loop running when the
        first source registers (the ``medians`` follower stays a thread: it blocks in librdkafka)."""
        self._tick_s = tick_ms / 1000.0
        self._task: asyncio.Task[None] | None = None
        # The budget rule spends its budget against the served values; the others need no record.
        follow = settings.emission_rule == "budget" if follow is None else follow
        self._follower = MediansFollower(settings) if follow else None
        self._producer = producer(settings, linger_ms=20, compression_type="none")
        self._sources: list[SketchingSource] = []
        self._lock = threading.Lock()  # guards _sources
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen_records = -1
        self.messages_sent = 0
        """Messages handed to the producer."""
        self.bytes_sent = 0
        """Their value bytes."""
        self.failed = 0
        """Messages the producer reported undelivered."""

    def register(self, source: SketchingSource) -> None:
        """Serve ``source`` from now on (starts the thread)."""
        with self._lock:
            self._sources.append(source)
        self.start()

    def unregister(self, source: SketchingSource) -> None:
        """Stop serving ``source`` (its close already sent what it had)."""
        with self._lock:
            if source in self._sources:
                self._sources.remove(source)

    def start(self) -> None:
        """Start the ticks and the follower (idempotent); in ``asyncio`` mode, from the running loop."""
        if self._thread is not None or self._task is not None:
            return
        if self.mode == "asyncio":
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("an asyncio SnapshotSender starts from a running event loop") from None
            self._task = loop.create_task(self._run_async(), name="snapshot-sender")
        else:
            self._thread = threading.Thread(target=self._run, name="snapshot-sender", daemon=True)
            self._thread.start()
        if self._follower is not None:
            self._follower.start()

    def send(self, key: bytes, value: bytes | None) -> None:
        """Produce one record to ``sketches`` (thread-safe: librdkafka's producer is)."""
        self._producer.produce(self.settings.topic_sketches, value=value, key=key, on_delivery=self._delivered)
        self.messages_sent += 1
        self.bytes_sent += len(value or b"")
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Wait until every message produced so far is delivered; return how many are still queued."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop the thread and the follower, deliver what is queued; return how many were not delivered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(timeout_s, self._tick_s * 4))
        if self._follower is not None:
            self._follower.stop()
        return self.flush(timeout_s)

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self.failed += 1
            logger.warning("a source's message to %s was not delivered: %s", self.settings.topic_sketches, error)

    def _view(self) -> GlobalView | None:
        follower = self._follower
        if follower is None or follower.records_read == self._seen_records or follower.latest is None:
            return None
        self._seen_records = follower.records_read
        return GlobalView.from_record(follower.latest)

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s):
            self._tick_safely()

    async def _run_async(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(self._tick_s)
            self._tick_safely()  # short: a serialization per source that sends, no network wait

    def _tick_safely(self) -> None:
        try:
            self.tick(_now_ms())
        except Exception:
            # A source's bad state must not end the loop that serves the others.
            logger.exception("snapshot sender: a tick failed; going on")

    def tick(self, now_ms: int) -> None:
        """One round: the newest record to every source, then what each has to send."""
        view = self._view()
        with self._lock:
            sources = list(self._sources)
        for source in sources:
            source.serve(now_ms, view, self)
        self._producer.poll(0)
