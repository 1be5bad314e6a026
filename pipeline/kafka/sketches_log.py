"""Reading the compacted ``sketches`` topic as the aggregator's state.

``sketches`` is keyed by shard and compacted, so read to its end it holds the
latest snapshot of every shard: it *is* the changelog of the aggregator's state.
A new aggregator (after a crash, a rebalance or for a replay) rebuilds from it
instead of from a second copy of every snapshot in a table's changelog.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from config import Settings
from pipeline.core.snapshot_checks import SnapshotLimits, check_sketches_message
from pipeline.core.wire import ShardProgress, SketchSnapshot, SnapshotError, parse_sketches_value
from pipeline.kafka.clients import consumer, watermarks

__all__ = ["SketchesLog", "read_sketches_log"]

logger = logging.getLogger(__name__)


@dataclass
class SketchesLog:
    """What ``sketches`` held, read from its beginning up to ``end_offset``."""

    snapshots: dict[int, SketchSnapshot] = field(default_factory=dict)
    """The latest valid snapshot of every shard not retired by a tombstone."""
    progress: dict[int, ShardProgress] = field(default_factory=dict)
    """The latest progress message (heartbeat) of every shard."""
    end_offset: int = 0
    """The high watermark read up to (exclusive)."""
    records_read: int = 0
    """Records read, including those compaction had not removed yet."""
    unreadable: int = 0
    """Records skipped as unreadable (they were dead-lettered when first consumed)."""
    seconds: float = 0.0
    """How long the read took."""


def read_sketches_log(settings: Settings, timeout_s: float = 60.0, shard_limit: int | None = None) -> SketchesLog:
    """Read ``sketches`` from its beginning to its current end (blocking; run it in a thread).

    With ``shard_limit`` (the input topic's partition count) the aggregator's
    context checks run too, so a rebuild skips the forgeries its agent rejected.
    """
    limits = None
    if shard_limit is not None:
        limits = SnapshotLimits(shard_limit, settings.max_value_bytes, settings.accept_infinity)
    started = time.monotonic()
    log = SketchesLog()
    client = consumer(settings, f"{settings.app_id}-rebuild-{uuid.uuid4().hex[:8]}")
    try:
        tp = TopicPartition(settings.topic_sketches, 0, OFFSET_BEGINNING)
        low, high = watermarks(client, tp, timeout_s)
        log.end_offset = high
        if high > low:
            client.assign([tp])
            _read_until(client, high, log, started + timeout_s, limits)
    finally:
        client.close()
    log.seconds = time.monotonic() - started
    return log


def _read_until(client: Consumer, high: int, log: SketchesLog, deadline: float, limits: SnapshotLimits | None) -> None:
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"sketches: read {log.records_read} records, not at offset {high} yet")
        for message in client.consume(10_000, 0.5):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    return
                logger.warning("sketches: %s", error)
                continue
            log.records_read += 1
            _apply(message.key(), message.value(), log, limits)
            if (message.offset() or 0) >= high - 1:
                return


def _apply(key: bytes | None, value: bytes | None, log: SketchesLog, limits: SnapshotLimits | None) -> None:
    if value is None:
        if key is not None and key.isdigit():  # a retired shard (heartbeat keys are not digits)
            log.snapshots.pop(int(key), None)
            log.progress.pop(int(key), None)
        return
    try:
        message = parse_sketches_value(value)
        if limits is not None:
            check_sketches_message(message, limits)
    except SnapshotError:
        log.unreadable += 1
        return
    if isinstance(message, ShardProgress):
        log.progress[message.shard] = message
        return
    held = log.snapshots.get(message.shard)
    if held is None or (message.last_offset, message.n) >= (held.last_offset, held.n):
        log.snapshots[message.shard] = message
