"""Typed, versioned messages of edge shards: sources that sketch their own numbers.

An edge shard is a source process (a service, a device, a batch job) that keeps
its own KLL sketch and sends snapshots to ``sketches`` instead of numbers to
``numbers``. Its messages share the snapshot envelope (magic ``DMSK``, version 1)
with the partition shards' and differ in the header: a ``source`` object names the
edge shard and numbers the message, where a partition shard's header has a
``shard`` id and a source offset::

    {"source": {"v": 1, "id": "web-7", "seq": 12}, "n": ..., "min": ..., ...}   + KLL bytes
    {"source": {"v": 1, "id": "web-7", "seq": 12}, "progress": {"v": 1, "n": ..., "ingested": ..., "ts": ...}}

* :class:`SourceSnapshot`: the source's sketch, with its sequence number. A
  source numbers its snapshots 1, 2, 3, ...: a higher number is a newer state, an
  equal one is the same state sent again (a retry or a restart's re-send).
* :class:`SourceProgress`: a heartbeat, as a shard's, carrying the sequence
  number of the last snapshot sent.

The keys these go under, and what the aggregator accepts of them, belong to
:mod:`pipeline.core.source_contract`. Pure: no Kafka, no Faust.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import datasketches

from pipeline.core.envelope import Envelope, pack_envelope, unpack_envelope
from pipeline.core.sketch import QuantileBand, quantile_band
from pipeline.core.wire import (
    PROGRESS_VERSION,
    SNAPSHOT_MAGIC,
    SNAPSHOT_VERSION,
    SnapshotError,
    _int,
    check_carried_sketch,
    sketch_fields,
    sketch_header,
)

__all__ = ["SOURCE_HEADER_VERSION", "SourceProgress", "SourceSnapshot", "parse_source_value"]

logger = logging.getLogger(__name__)

SOURCE_HEADER_VERSION = 1
"""Version of the ``source`` header object (the envelope stays at version 1)."""


@dataclass(frozen=True)
class SourceSnapshot:
    """An edge shard's sketch as sent to ``sketches`` (key: ``source_key(source)``)."""

    source: str
    """The edge shard's name (see :func:`pipeline.core.source_contract.check_source_name`)."""
    seq: int
    """The snapshot's sequence number: 1 for a source's first snapshot, one more for each after it."""
    n: int
    """Numbers summarised by the sketch."""
    min: float
    """Smallest number added (NaN when empty)."""
    max: float
    """Largest number added (NaN when empty)."""
    median: QuantileBand
    """The source's local median and the values at its rank-error bounds."""
    rank_error: float
    """The sketch's normalized rank error (99% confidence, single-sided)."""
    k: int
    """The KLL accuracy parameter."""
    ts: int
    """Send time on the source's clock, epoch milliseconds."""
    rejected: int
    """Numbers the source refused so far (NaN, or infinities when they are not accepted)."""
    sketch_bytes: bytes
    """Standard DataSketches ``kll_doubles_sketch`` serialization."""
    urgent: bool = False
    """Sent under the error-budget rule: publish at once (as a shard's ``urgent``)."""

    @property
    def last_offset(self) -> int:
        """The sequence number, read by the snapshot checks where a shard's offset is (it orders the states)."""
        return self.seq

    @classmethod
    def of_sketch(
        cls, source: str, seq: int, sketch: datasketches.kll_doubles_sketch, ts: int, rejected: int = 0,
        urgent: bool = False,
    ) -> SourceSnapshot:  # fmt: skip
        """Snapshot a source's sketch."""
        error = float(sketch.normalized_rank_error(False))
        empty = sketch.is_empty()
        return cls(
            source=source,
            seq=seq,
            n=int(sketch.n),
            min=math.nan if empty else float(sketch.get_min_value()),
            max=math.nan if empty else float(sketch.get_max_value()),
            median=quantile_band(sketch, 0.5, error),
            rank_error=error,
            k=int(sketch.k),
            ts=ts,
            rejected=rejected,
            sketch_bytes=sketch.serialize(),
            urgent=urgent,
        )

    def sketch(self) -> datasketches.kll_doubles_sketch:
        """Deserialize the carried sketch."""
        return datasketches.kll_doubles_sketch.deserialize(self.sketch_bytes)

    def to_bytes(self) -> bytes:
        """Serialize to the wire format."""
        header = {"source": {"v": SOURCE_HEADER_VERSION, "id": self.source, "seq": self.seq}, **sketch_header(self)}
        return pack_envelope(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, header, self.sketch_bytes)

    @classmethod
    def _from_envelope(cls, envelope: Envelope, source: str, seq: int) -> SourceSnapshot:
        try:
            snapshot = cls(source=source, seq=seq, **sketch_fields(envelope))
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError("bad_header", f"missing or mistyped field: {exc!r}") from None
        if snapshot.n < 0:
            raise SnapshotError("bad_header", f"negative n {snapshot.n}")
        check_carried_sketch(snapshot)
        return snapshot


@dataclass(frozen=True)
class SourceProgress:
    """An edge shard's heartbeat: alive, and how far it has added beyond its last snapshot (~110 bytes)."""

    source: str
    """The edge shard's name."""
    seq: int
    """Sequence number of the last snapshot sent (0: none yet)."""
    n: int
    """Numbers in that snapshot."""
    ingested: int
    """Numbers the source has added now (>= n): ``ingested - n`` are pending."""
    ts: int
    """Send time on the source's clock, epoch milliseconds."""

    @property
    def pending(self) -> int:
        """Numbers added but not in the last snapshot."""
        return self.ingested - self.n

    def to_bytes(self) -> bytes:
        """Serialize to the wire format."""
        header = {
            "source": {"v": SOURCE_HEADER_VERSION, "id": self.source, "seq": self.seq},
            "progress": {"v": PROGRESS_VERSION, "n": self.n, "ingested": self.ingested, "ts": self.ts},
        }
        return pack_envelope(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, header, b"")

    @classmethod
    def _from_envelope(cls, envelope: Envelope, source: str, seq: int) -> SourceProgress:
        body = envelope.header["progress"]
        if not isinstance(body, dict) or body.get("v") != PROGRESS_VERSION:
            raise SnapshotError("unsupported_version", f"progress {body!r:.60} is not of version {PROGRESS_VERSION}")
        try:
            progress = cls(source, seq, _int(body["n"]), _int(body["ingested"]), _int(body["ts"]))
        except (KeyError, TypeError) as exc:
            raise SnapshotError("bad_header", f"missing or mistyped progress field: {exc!r}") from None
        if progress.n < 0 or progress.ingested < progress.n or (progress.seq == 0 and progress.n):
            raise SnapshotError("bad_header", f"inconsistent progress counts in {progress}")
        if envelope.payload:
            raise SnapshotError("bad_header", f"a progress message carries no payload, found {len(envelope.payload)} B")
        return progress


def parse_source_value(data: bytes) -> SourceSnapshot | SourceProgress:
    """A value an edge shard wrote to ``sketches``; :class:`SnapshotError` naming what is wrong otherwise.

    This checks the message against itself (as a shard snapshot's ``from_bytes``
    does); whether it fits its key, its source's history and the limits is
    :func:`pipeline.core.source_contract.accept_source`'s to say.
    """
    envelope = unpack_envelope(data, SNAPSHOT_MAGIC, SNAPSHOT_VERSION)
    head = envelope.header.get("source")
    if not isinstance(head, dict):
        raise SnapshotError("bad_header", "no source object: not an edge shard's message")
    if head.get("v") != SOURCE_HEADER_VERSION:
        raise SnapshotError("unsupported_version", f"source header version {head.get('v')!r} is not 1")
    try:
        source, seq = head["id"], _int(head["seq"])
    except (KeyError, TypeError) as exc:
        raise SnapshotError("bad_header", f"missing or mistyped source field: {exc!r}") from None
    if not isinstance(source, str):
        raise SnapshotError("bad_header", f"source id is a {type(source).__name__}, not a string")
    if "progress" in envelope.header:
        if seq < 0:
            raise SnapshotError("bad_header", f"negative sequence number {seq}")
        return SourceProgress._from_envelope(envelope, source, seq)
    if seq < 1:
        raise SnapshotError("bad_header", f"sequence number {seq}: a source's snapshots are numbered from 1")
    return SourceSnapshot._from_envelope(envelope, source, seq)
