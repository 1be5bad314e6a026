"""Reading exactly the input a served estimate covers, once per audit pass, in bounded memory.

Shard p's snapshot covers partition p of the input topic from its first record up
to and including the snapshot's ``last_offset``. Each pass reads those records
partition by partition with explicit offsets (``assign``, never a group commit),
decodes them with the shards' own codec and options, and hands the accepted
numbers to the audit chunk by chunk. At most ``chunk_bytes`` of message values
are decoded at once, and librdkafka's prefetch queue is capped at ``queue_kbytes``,
so the memory used does not grow with the topic.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from config import Settings
from pipeline.core.audit import ShardChunk
from pipeline.core.codec import CodecOptions, decode_batch
from pipeline.core.ingest import rejection_counts
from pipeline.core.wire import MedianRecord, SketchSnapshot
from pipeline.kafka.clients import consumer, watermarks

__all__ = ["KafkaChunkSource", "ReaderOptions", "ShardRange", "latest_median_record", "plan_ranges"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderOptions:
    """How much the reader holds and how long it waits."""

    chunk_bytes: int = 32 * 1024 * 1024
    """Most message bytes fetched and decoded at once."""
    max_messages: int = 10_000
    """Most messages per ``consume`` call."""
    queue_kbytes: int = 32 * 1024
    """librdkafka's prefetch queue bound (``queued.max.messages.kbytes``)."""
    idle_timeout_s: float = 60.0
    """Give up when a partition yields nothing for this long before its last covered offset."""


@dataclass(frozen=True)
class ShardRange:
    """The records of one input partition a snapshot covers."""

    shard: int
    """The shard: partition of the input topic."""
    start: int
    """First offset to read: the partition's log start offset."""
    last_offset: int
    """The snapshot's last covered offset, inclusive (-1: nothing)."""
    end: int
    """The partition's end offset (high watermark) when planned."""
    problems: tuple[str, ...] = ()
    """Why this range cannot be read as the snapshot claims."""

    @property
    def records(self) -> int:
        """Offsets to read (an upper bound on the records: offsets may have gaps)."""
        return max(0, min(self.last_offset + 1, self.end) - self.start)

    @property
    def exact(self) -> bool:
        """False when covered records were deleted, so no exact answer exists."""
        return not (self.start > 0 and self.last_offset >= 0)


def _describe(client: Consumer, topic: str) -> int:
    metadata = client.list_topics(timeout=30)  # one topic's metadata would auto-create it
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        raise RuntimeError(f"input topic {topic!r} does not exist or cannot be described")
    return len(described.partitions)


def plan_ranges(settings: Settings, snapshots: Mapping[int, SketchSnapshot]) -> list[ShardRange]:
    """The covered range of each snapshot's partition, with what is wrong with it."""
    client = consumer(settings, f"dmedian-verify-{uuid.uuid4().hex[:8]}")
    ranges = []
    try:
        partitions = _describe(client, settings.topic_numbers)
        for shard in sorted(snapshots):
            last = snapshots[shard].last_offset
            if shard >= partitions:
                problem = f"input topic has {partitions} partitions: there is no partition {shard}"
                ranges.append(ShardRange(shard, 0, -1, 0, (problem,)))
                continue
            low, high = watermarks(client, TopicPartition(settings.topic_numbers, shard))
            problems = []
            if low > 0 and last >= 0:
                problems.append(f"records before offset {low} were deleted (retention): cannot be exact")
            if high <= last:
                problems.append(f"input ends at offset {high - 1}, the snapshot covers up to {last}")
            ranges.append(ShardRange(shard, low, last, high, tuple(problems)))
    finally:
        client.close()
    return ranges


class KafkaChunkSource:
    """The covered input records, decoded as the shards decode them; see the module docs."""

    def __init__(
        self,
        settings: Settings,
        ranges: Sequence[ShardRange],
        options: ReaderOptions = ReaderOptions(),
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self._settings = settings
        self._ranges = list(ranges)
        self._options = options
        self._codec = CodecOptions(settings.accept_infinity, settings.max_value_bytes)
        self._on_progress = on_progress
        self._problems: dict[int, list[str]] = {r.shard: list(r.problems) for r in self._ranges}
        self.records_read: dict[int, int] = {}
        """Records read per shard in pass 1."""

    @property
    def total_records(self) -> int:
        """Offsets one pass reads, for a progress bar."""
        return sum(r.records for r in self._ranges)

    def problems(self) -> Mapping[int, Sequence[str]]:
        """Per shard, what the input could not provide as the snapshot claims."""
        return {shard: tuple(found) for shard, found in self._problems.items() if found}

    def read(self, pass_number: int) -> Iterator[ShardChunk]:
        """Every covered number once, in chunks (partitions are fetched together)."""
        for shard_range in self._ranges:
            yield ShardChunk(shard_range.shard, np.empty(0))  # every claimed shard is seen, even if empty
        cursors = {r.shard: _Cursor(r) for r in self._ranges if r.records}
        if not cursors:
            return
        client = consumer(
            self._settings,
            f"dmedian-verify-{uuid.uuid4().hex[:8]}",
            queued_max_messages_kbytes=self._options.queue_kbytes,
            fetch_max_bytes=min(self._options.queue_kbytes * 1024, 50 * 1024 * 1024),
            # A full queue postpones the next fetch by this much (1 s by default):
            # with a small queue, that wait, not the work, would set the pace.
            fetch_queue_backoff_ms=10,
        )
        topic = self._settings.topic_numbers
        try:
            client.assign([TopicPartition(topic, c.shard, c.next_offset) for c in cursors.values()])
            # One message first: a batch's size in bytes is unknown until one is seen.
            batch, idle_since = 1, time.monotonic()
            while cursors:
                # consume() waits for all it was asked for: never ask past the covered ends.
                wanted = min(batch, sum(c.remaining for c in cursors.values()))
                messages = client.consume(wanted, timeout=1.0)
                for shard, values in _by_partition(messages, cursors).items():
                    idle_since = time.monotonic()
                    yield self._decode(shard, values)
                    if self._on_progress is not None:
                        self._on_progress(pass_number, len(values))
                    if pass_number == 1:
                        self.records_read[shard] = self.records_read.get(shard, 0) + len(values)
                if messages:
                    # Size the next fetch by the largest value seen, so that at most
                    # about chunk_bytes of values are held at once.
                    largest = max(len(m.value() or b"") for m in messages)
                    batch = min(self._options.max_messages, max(1, self._options.chunk_bytes // max(largest, 1)))
                idle = time.monotonic() - idle_since > self._options.idle_timeout_s
                for cursor in [c for c in cursors.values() if c.finished or idle]:
                    self._finish(pass_number, cursor, idle)
                    client.pause([TopicPartition(topic, cursor.shard)])
                    del cursors[cursor.shard]
        finally:
            client.close()

    def _finish(self, pass_number: int, cursor: _Cursor, idle: bool) -> None:
        last, planned_end = cursor.range.last_offset, cursor.range.end
        if idle and not cursor.finished:
            waited = f"{self._options.idle_timeout_s:.0f} s"
            self._note(pass_number, cursor.shard, f"nothing after offset {cursor.next_offset - 1} in {waited}")
        elif cursor.next_offset <= last and planned_end > last:  # else the plan already says the input is short
            self._note(pass_number, cursor.shard, f"input ended at offset {cursor.next_offset - 1}, covered to {last}")

    def _decode(self, shard: int, values: list[bytes | None]) -> ShardChunk:
        decoded = decode_batch(values, self._codec)
        rejected = sum(sum(rejection_counts(r).values()) for r in decoded.rejections)
        return ShardChunk(shard, decoded.values, rejected)

    def _note(self, pass_number: int, shard: int, problem: str) -> None:
        if pass_number == 1:
            self._problems.setdefault(shard, []).append(problem)
        logger.warning("shard %d: %s", shard, problem)


class _Cursor:
    """Where the reading of one partition stands, and which fetched records are covered."""

    def __init__(self, shard_range: ShardRange) -> None:
        self.range = shard_range
        self.shard = shard_range.shard
        self.next_offset = shard_range.start
        self.ended_at: int | None = None

    @property
    def remaining(self) -> int:
        """Covered offsets not read yet."""
        return max(0, self.range.last_offset + 1 - self.next_offset)

    @property
    def finished(self) -> bool:
        """Whether every covered record was read, or the partition ended before."""
        ended = self.ended_at is not None and self.next_offset >= self.ended_at
        return self.remaining == 0 or ended

    def take(self, message: Message) -> bool:
        """Whether ``message`` is a covered record not read yet (and note where reading stands)."""
        offset, error = message.offset(), message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                self.ended_at = offset
            else:
                logger.warning("partition %d: %s", self.shard, error)
            return False
        if offset is None or offset < self.next_offset:
            return False
        if offset > self.range.last_offset:  # past the covered end (offsets may skip the last one)
            self.next_offset = self.range.last_offset + 1
            return False
        self.next_offset = offset + 1
        return True


def _by_partition(messages: Sequence[Message], cursors: Mapping[int, _Cursor]) -> dict[int, list[bytes | None]]:
    """The covered values among ``messages``, grouped by partition in offset order."""
    grouped: dict[int, list[bytes | None]] = {}
    for message in messages:
        partition = message.partition()
        cursor = cursors.get(partition) if partition is not None else None
        if cursor is None:
            continue  # a partition already finished (paused) or not ours
        if cursor.take(message):
            grouped.setdefault(cursor.shard, []).append(message.value())
    return grouped


def latest_median_record(settings: Settings, timeout_s: float = 30.0) -> MedianRecord | None:
    """The last record on ``medians`` (None when there is none or it cannot be read)."""
    client = consumer(settings, f"dmedian-verify-{uuid.uuid4().hex[:8]}")
    try:
        tp = TopicPartition(settings.topic_medians, 0)
        low, high = watermarks(client, tp)
        if high <= low:
            return None
        client.assign([TopicPartition(settings.topic_medians, 0, high - 1)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = client.poll(0.5)
            if message is None:
                continue
            error, value = message.error(), message.value()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                continue
            if error is not None or value is None:
                return None
            try:
                return MedianRecord.from_json(value)
            except (ValueError, KeyError) as exc:
                logger.warning("latest medians record at offset %d is unreadable: %s", message.offset(), exc)
                return None
        return None
    finally:
        client.close()
