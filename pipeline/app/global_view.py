"""Every worker follows the latest ``medians`` record: the shards' budget is spent against it.

``medians`` has one partition, and a Faust agent would share it with the group
(one worker would see it). So each worker reads it on its own, outside the group,
from a thread with a plain consumer; the shard service's timer picks up the newest
record from here. Losing a record costs nothing: only the newest matters.
"""

from __future__ import annotations

import logging
import threading

from config import Settings
from pipeline.core.wire import MedianRecord
from pipeline.kafka.follow import follow_medians

__all__ = ["MediansFollower"]

logger = logging.getLogger(__name__)


class MediansFollower:
    """Reads ``medians`` in a daemon thread and keeps the newest record."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest: MedianRecord | None = None
        """The newest record read (assigned whole, so safe to read from the event loop)."""
        self.records_read = 0
        """Records read so far (a changed value means a newer record)."""

    def start(self) -> None:
        """Start following (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="medians-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop following; the thread ends within one poll."""
        self._stop.set()

    def _run(self) -> None:
        try:
            for record in follow_medians(self._settings, poll_s=0.1):
                if self._stop.is_set():
                    return
                if record is not None:
                    self.latest = record
                    self.records_read += 1
        except Exception:
            # Without records the shards fall back to the growth rule: degraded, not wrong.
            logger.exception("following %s failed; shards send on growth only", self._settings.topic_medians)
