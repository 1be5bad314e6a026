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
from pipeline.core.sketches_contract import SnapshotLimits, Tombstone, accept, newer_than
from pipeline.core.source_contract import SourceBook, SourcePolicy, SourceTombstone
from pipeline.core.source_wire import SourceProgress, SourceSnapshot
from pipeline.core.wire import ShardProgress, SketchSnapshot, SnapshotError
from pipeline.kafka.clients import consumer, retrying, watermarks

__all__ = ["SketchesLog", "read_sketches_log", "source_policy"]

logger = logging.getLogger(__name__)

_MAX_REFUSED = 100_000
"""Refusals kept with their reasons (a flood of forgeries must not grow the rebuild without bound)."""


@dataclass
class SketchesLog:
    """What ``sketches`` held, read from its beginning up to ``end_offset``."""

    snapshots: dict[int, SketchSnapshot] = field(default_factory=dict)
    """The latest valid snapshot of every shard not retired by a tombstone."""
    progress: dict[int, ShardProgress] = field(default_factory=dict)
    """The latest progress message (heartbeat) of every shard."""
    sources: dict[str, SourceSnapshot] = field(default_factory=dict)
    """The latest admitted snapshot of every edge shard not retired."""
    book: SourceBook = field(default_factory=lambda: SourceBook(SourcePolicy()))
    """The edge shards' ledger as the records read left it (the aggregator goes on with it)."""
    end_offset: int = 0
    """The high watermark read up to (exclusive)."""
    records_read: int = 0
    """Records read, including those compaction had not removed yet."""
    unreadable: int = 0
    """Records refused by the contract (the agent dead-letters each when it reads it)."""
    refused: dict[int, SnapshotError] = field(default_factory=dict)
    """Why each refused record was refused, by offset (the first ``_MAX_REFUSED``): the agent,
    which skips the records the rebuild read, dead-letters these with the rebuild's verdict."""
    seconds: float = 0.0
    """How long the read took."""


def source_policy(settings: Settings) -> SourcePolicy:
    """What the aggregator accepts of edge shards, from the settings."""
    return SourcePolicy(
        id_pattern=settings.source_id_pattern,
        max_sources=settings.max_sources,
        messages_per_s=settings.source_messages_per_s,
        burst=settings.source_burst,
        min_k=settings.sketch_k,
        max_sketch_bytes=settings.max_source_sketch_bytes,
        max_clock_ahead_ms=settings.source_clock_ahead_ms,
        accept_infinity=settings.accept_infinity,
    )


def read_sketches_log(settings: Settings, timeout_s: float = 60.0, shard_limit: int | None = None) -> SketchesLog:
    """Read ``sketches`` from its beginning to its current end (blocking; run it in a thread).

    Every record goes through the topic's contract (:func:`~pipeline.core.sketches_contract.accept`),
    the aggregator agent's own check, so a rebuild skips exactly the records its
    agent rejected. ``shard_limit`` is the input topic's partition count; without
    it, the cluster's (or ``numbers_partitions`` or ``shard_id_limit``, if larger) is used.
    """
    started = time.monotonic()
    log = SketchesLog(book=SourceBook(source_policy(settings)))
    client = consumer(settings, f"{settings.app_id}-rebuild-{uuid.uuid4().hex[:8]}")
    try:
        if shard_limit is None:
            shard_limit = _input_partitions(client, settings, timeout_s)
        limits = SnapshotLimits(shard_limit, settings.max_value_bytes, settings.accept_infinity)
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


def _input_partitions(client: Consumer, settings: Settings, timeout_s: float) -> int:
    # All topics' metadata: asking for one topic's would auto-create it on some brokers.
    metadata = retrying(lambda: client.list_topics(timeout=min(timeout_s, 30.0)), timeout_s)
    topic = metadata.topics.get(settings.topic_numbers)
    found = len(topic.partitions) if topic is not None and topic.error is None else 0
    return max(found, settings.numbers_partitions, settings.shard_id_limit)


def _read_until(client: Consumer, high: int, log: SketchesLog, deadline: float, limits: SnapshotLimits) -> None:
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
            _apply(message.offset() or 0, message.key(), message.value(), log, limits)
            if (message.offset() or 0) >= high - 1:
                return


def _apply(offset: int, key: bytes | None, value: bytes | None, log: SketchesLog, limits: SnapshotLimits) -> None:
    try:
        message = accept(key, value, limits, log.book.policy)
        # An edge shard's message goes through the agent's own ledger, in the same order.
        now_ms = _now_ms()
        if isinstance(message, SourceSnapshot | SourceProgress) and not log.book.admit(
            message, now_ms, heard_ms=min(message.ts, now_ms)
        ):
            return  # the state held, sent again
    except SnapshotError as exc:
        log.unreadable += 1
        if len(log.refused) < _MAX_REFUSED:
            log.refused[offset] = exc
        return
    if isinstance(message, SourceTombstone):
        if not message.progress:
            log.sources.pop(message.source, None)
            log.book.retire(message.source)
    elif isinstance(message, SourceSnapshot):
        log.sources[message.source] = message
    elif isinstance(message, SourceProgress):
        pass  # the book holds what the record needs of it (pending, staleness)
    elif isinstance(message, Tombstone):
        if not message.progress:  # a retired shard
            log.snapshots.pop(message.shard, None)
        log.progress.pop(message.shard, None)
    elif isinstance(message, ShardProgress):
        log.progress[message.shard] = message
    else:
        held = log.snapshots.get(message.shard)
        # Not older than the one held: an equal state replaces it too (its ts is the later sign of life).
        if held is None or not newer_than(held, message):
            log.snapshots[message.shard] = message


def _now_ms() -> int:
    return int(time.time() * 1000)
