"""Reading the output topics: the latest global record, and the latest snapshot per shard."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from config import Settings
from pipeline.core.wire import MedianRecord, SketchSnapshot, SnapshotError
from pipeline.kafka.clients import consumer

__all__ = ["follow_medians", "latest_snapshots", "wait_for_record"]

logger = logging.getLogger(__name__)

# Errors a partition shows for a moment after its topic is created.
_SETTLING = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART)


def _watermarks(client: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> tuple[int, int]:
    """Low and high watermarks, retrying while a just-created topic's leader settles."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = client.get_watermark_offsets(tp, timeout=10)
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (error.retriable() or error.code() in _SETTLING)
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


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
            low, high = _watermarks(client, tp)
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
    client = consumer(settings, f"dmedian-shards-{uuid.uuid4().hex[:8]}")
    latest: dict[int, SketchSnapshot] = {}
    try:
        tp = TopicPartition(settings.topic_sketches, 0, OFFSET_BEGINNING)
        low, high = _watermarks(client, tp)
        if high <= low:
            return latest
        client.assign([tp])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = client.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    break
                continue
            value = message.value()
            if value is None:
                key = message.key() or b""
                if key.isdigit():  # a retired shard (not a heartbeat's key, nor a stray one)
                    latest.pop(int(key), None)
            else:
                try:
                    snapshot = SketchSnapshot.from_bytes(value)
                except SnapshotError:
                    continue
                held = latest.get(snapshot.shard)
                if held is None or snapshot.last_offset >= held.last_offset:
                    latest[snapshot.shard] = snapshot
            if (message.offset() or 0) >= high - 1:
                break
    finally:
        client.close()
    return latest
