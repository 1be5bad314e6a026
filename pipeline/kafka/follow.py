"""Reading the output topics: the latest global record, and the latest snapshot per shard."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from config import Settings
from pipeline.core.wire import MedianRecord, SketchSnapshot
from pipeline.kafka.clients import consumer, watermarks
from pipeline.kafka.sketches_log import read_sketches_log

__all__ = ["follow_medians", "latest_snapshots", "wait_for_record"]

logger = logging.getLogger(__name__)


def follow_medians(
    settings: Settings, from_beginning: bool = False, poll_s: float = 0.5
) -> Iterator[MedianRecord | None]:
    """Yield each new ``medians`` record as it arrives; yield None on every idle poll.

    With ``from_beginning`` false it starts at the last record already there, so a
    watcher sees the current estimate at once.
    """
    client = consumer(settings, f"dmedian-follow-{uuid.uuid4().hex[:8]}", enable_partition_eof=False)
    try:
        tp = TopicPartition(settings.topic_medians, 0, OFFSET_BEGINNING)
        if not from_beginning:
            low, high = watermarks(client, tp)
            tp.offset = max(low, high - 1) if high > low else OFFSET_END
        client.assign([tp])
        while True:
            message = client.poll(poll_s)
            if message is None:
                yield None
                continue
            if message.error():
                logger.warning("medians: %s", message.error())
                continue
            value = message.value()
            if value is None:
                continue
            try:
                yield MedianRecord.from_json(value)
            except (ValueError, KeyError) as exc:
                logger.warning("skipping unreadable medians record at offset %d: %s", message.offset(), exc)
    finally:
        client.close()


def wait_for_record(
    settings: Settings,
    done: Callable[[MedianRecord], bool],
    timeout_s: float,
    give_up: Callable[[], bool] = lambda: False,
) -> MedianRecord | None:
    """The first record (at or after the latest) for which ``done`` holds.

    Returns the last record seen when ``timeout_s`` passes or ``give_up()`` turns
    true (say, the worker died), so the caller can report how far it got.
    """
    deadline = time.monotonic() + timeout_s
    last: MedianRecord | None = None
    for record in follow_medians(settings):
        if record is not None:
            last = record
            if done(record):
                return record
        if time.monotonic() > deadline or give_up():
            return last
    return last


def latest_snapshots(settings: Settings, timeout_s: float = 30.0) -> dict[int, SketchSnapshot]:
    """Read ``sketches`` to its end and return the latest snapshot of every shard."""
    return read_sketches_log(settings, timeout_s).snapshots
