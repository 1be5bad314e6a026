"""The ingestion seam: apply one partition's raw records to its shard state.

Whatever delivers records (Faust's per-event stream today, a batch driver
later) hands this function one partition's records in offset order. It skips
records the state already holds (redelivery after a crash), decodes the rest
in one vectorised call and applies them with one sketch update.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.core.codec import CodecOptions, Rejection, decode_batch
from pipeline.core.sketch import ShardState

__all__ = ["IngestResult", "RawRecord", "RecordBatch", "ingest_batch", "ingest_records", "rejection_counts"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawRecord:
    """One input record as delivered by Kafka."""

    offset: int
    """Source offset within the partition."""
    value: bytes | None
    """The undecoded message value."""
    key: bytes | None = None
    """The message key (free for sources to choose; only picks the partition)."""


@dataclass(frozen=True)
class IngestResult:
    """What one call of :func:`ingest_records` did."""

    accepted: int
    """Numbers added to the sketch."""
    skipped: int
    """Records at or below the state's last offset, already counted before."""
    rejections: tuple[tuple[RawRecord, Rejection], ...]
    """Rejected records (whole or in part), each with its record for the dead-letter topic."""
    advanced: bool
    """Whether the state's offset moved, so that it must be written (once)."""
    accepted_values: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0), compare=False, repr=False)
    """The numbers added to the sketch, in order (for the emission budget's counts)."""


def rejection_counts(rejection: Rejection) -> dict[str, int]:
    """Counter increments for one rejection: per element for batches, else per message."""
    if rejection.bad_elements:
        return dict(Counter(bad.reason.value for bad in rejection.bad_elements))
    return {rejection.reason.value: 1}


@dataclass(frozen=True)
class RecordBatch:
    """One partition's records in offset order, column by column (no object per record)."""

    offsets: Sequence[int]
    """Source offsets, strictly increasing."""
    values: Sequence[bytes | None]
    """Undecoded message values, aligned with ``offsets``."""
    keys: Sequence[bytes | None]
    """Message keys, aligned with ``offsets``."""

    def record(self, index: int) -> RawRecord:
        """The record at ``index`` as one object (for dead letters)."""
        return RawRecord(self.offsets[index], self.values[index], self.keys[index])


def _in_order(batch: RecordBatch, shard: int) -> RecordBatch:
    """The batch with every record whose offset does not exceed an earlier one dropped.

    A redelivery can repeat records inside one batch (Faust's per-event path around
    a seek). Counting a repeated offset twice would break ``n``, so only the first
    delivery of each offset is kept. The check is one vectorised pass.
    """
    offsets = np.asarray(batch.offsets, dtype=np.int64)
    if offsets.size < 2 or bool((offsets[1:] > offsets[:-1]).all()):
        return batch
    keep = offsets > np.maximum.accumulate(np.concatenate(([-2], offsets[:-1])))
    kept = np.flatnonzero(keep).tolist()
    logger.warning(
        "shard %d: dropped %d repeated or out-of-order records in one batch", shard, len(offsets) - len(kept)
    )
    return RecordBatch([batch.offsets[i] for i in kept], [batch.values[i] for i in kept], [batch.keys[i] for i in kept])


def ingest_records(state: ShardState, records: Sequence[RawRecord], options: CodecOptions) -> IngestResult:
    """Apply the records after ``state.last_offset`` to ``state`` (records in offset order)."""
    ordered = sorted(records, key=lambda record: record.offset)
    batch = RecordBatch([r.offset for r in ordered], [r.value for r in ordered], [r.key for r in ordered])
    return ingest_batch(state, batch, options)


def ingest_batch(state: ShardState, batch: RecordBatch, options: CodecOptions) -> IngestResult:
    """Apply the records of ``batch`` after ``state.last_offset`` to ``state``; see module docs."""
    batch = _in_order(batch, state.shard)
    # Offsets now strictly grow: everything already applied is a prefix.
    start = bisect.bisect_right(batch.offsets, state.last_offset)
    if start:
        logger.info(
            "shard %d: skipped %d records already applied (up to offset %d)", state.shard, start, state.last_offset
        )
    if start == len(batch.offsets):
        return IngestResult(0, start, (), advanced=False)
    values = batch.values[start:] if start else batch.values
    decoded = decode_batch(values, options)
    counts: Counter[str] = Counter()
    for rejection in decoded.rejections:
        counts.update(rejection_counts(rejection))
    state.apply(decoded.values, batch.offsets[-1], counts)
    rejected = tuple((batch.record(start + r.index), r) for r in decoded.rejections)
    return IngestResult(int(decoded.values.size), start, rejected, advanced=True, accepted_values=decoded.values)
