"""Typed, versioned messages that cross Kafka: snapshots, median records, dead letters.

* :class:`SketchSnapshot` goes to the compacted ``sketches`` topic, key = shard id.
  Binary envelope (see :mod:`pipeline.core.envelope`) with the standard
  DataSketches KLL serialization as payload.
* :class:`MedianRecord` goes to ``medians``, key ``global``, as JSON.
* :class:`DeadLetter` goes to ``dead-letters`` as JSON with the original bytes.

A reader refuses a version it does not know instead of guessing.
"""

from __future__ import annotations

import base64
import logging
import math
from dataclasses import dataclass
from typing import Any

import datasketches
import orjson

from pipeline.core.envelope import EnvelopeError, pack_envelope, unpack_envelope
from pipeline.core.sketch import QuantileBand, ShardState, quantile_band

__all__ = [
    "MEDIAN_RECORD_VERSION",
    "SNAPSHOT_VERSION",
    "DeadLetter",
    "MedianRecord",
    "SketchSnapshot",
    "SnapshotError",
    "quantile_key",
]

logger = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"DMSK"
SNAPSHOT_VERSION = 1
MEDIAN_RECORD_VERSION = 1
DEAD_LETTER_VERSION = 1

SnapshotError = EnvelopeError
"""Raised for snapshot bytes that are forged, corrupt, truncated or of an unknown version."""


def quantile_key(q: float) -> str:
    """The JSON key of quantile ``q`` (``0.5`` -> ``"0.5"``): the shortest repr that round-trips."""
    return repr(float(q))


@dataclass(frozen=True)
class SketchSnapshot:
    """A shard's sketch as emitted to ``sketches`` (key = shard id)."""

    shard: int
    """The shard id: the partition of the input topic."""
    n: int
    """Numbers summarised by the sketch."""
    min: float
    """Smallest number seen (NaN when empty)."""
    max: float
    """Largest number seen (NaN when empty)."""
    median: QuantileBand
    """The shard's local median and the values at its rank-error bounds."""
    rank_error: float
    """The shard sketch's normalized rank error (99% confidence, single-sided)."""
    last_offset: int
    """Offset of the last source record reflected in the sketch."""
    k: int
    """The KLL accuracy parameter."""
    ts: int
    """Emission time, epoch milliseconds."""
    rejected: int
    """Rejected messages or elements of this shard so far, all reasons."""
    sketch_bytes: bytes
    """Standard DataSketches ``kll_doubles_sketch`` serialization."""

    @classmethod
    def from_state(cls, state: ShardState, ts: int) -> SketchSnapshot:
        """Snapshot a shard's current state."""
        sketch = state.sketch
        error = float(sketch.normalized_rank_error(False))
        empty = sketch.is_empty()
        return cls(
            shard=state.shard,
            n=state.n,
            min=math.nan if empty else float(sketch.get_min_value()),
            max=math.nan if empty else float(sketch.get_max_value()),
            median=quantile_band(sketch, 0.5, error),
            rank_error=error,
            last_offset=state.last_offset,
            k=int(sketch.k),
            ts=ts,
            rejected=sum(state.rejected.values()),
            sketch_bytes=sketch.serialize(),
        )

    def sketch(self) -> datasketches.kll_doubles_sketch:
        """Deserialize the carried sketch."""
        return datasketches.kll_doubles_sketch.deserialize(self.sketch_bytes)

    def to_bytes(self) -> bytes:
        """Serialize to the wire format."""
        header = {
            "shard": self.shard,
            "n": self.n,
            "min": _json_float(self.min),
            "max": _json_float(self.max),
            "median": _band_json(self.median),
            "rank_error": self.rank_error,
            "last_offset": self.last_offset,
            "k": self.k,
            "ts": self.ts,
            "rejected": self.rejected,
        }
        return pack_envelope(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, header, self.sketch_bytes)

    @classmethod
    def from_bytes(cls, data: bytes) -> SketchSnapshot:
        """Parse and validate; raises :class:`SnapshotError` naming what is wrong."""
        envelope = unpack_envelope(data, SNAPSHOT_MAGIC, SNAPSHOT_VERSION)
        h = envelope.header
        try:
            snapshot = cls(
                shard=_int(h["shard"]),
                n=_int(h["n"]),
                min=_float(h["min"]),
                max=_float(h["max"]),
                median=QuantileBand(*(_float(h["median"][f]) for f in ("value", "lower", "upper"))),
                rank_error=_float(h["rank_error"]),
                last_offset=_int(h["last_offset"]),
                k=_int(h["k"]),
                ts=_int(h["ts"]),
                rejected=_int(h["rejected"]),
                sketch_bytes=envelope.payload,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError("bad_header", f"missing or mistyped field: {exc!r}") from None
        snapshot._check_sketch()
        return snapshot

    def _check_sketch(self) -> None:
        if self.shard < 0 or self.n < 0 or self.last_offset < -1:
            raise SnapshotError(
                "bad_header", f"negative shard, n or offset in {self.shard}/{self.n}/{self.last_offset}"
            )
        try:
            sketch = self.sketch()
        # The bytes are untrusted: whatever the C++ deserializer raises (IndexError
        # for a truncated buffer, RuntimeError, ValueError, ...) is a bad sketch.
        except Exception as exc:
            raise SnapshotError("bad_sketch", f"sketch does not deserialize: {exc}") from None
        if int(sketch.n) != self.n or int(sketch.k) != self.k:
            raise SnapshotError(
                "inconsistent", f"header says n={self.n} k={self.k}, sketch has n={sketch.n} k={sketch.k}"
            )


@dataclass(frozen=True)
class QuantileEstimate:
    """One served quantile."""

    q: float
    """The quantile's rank, in [0, 1]."""
    band: QuantileBand
    """The estimate and its values at ranks q -+ rank_error."""


@dataclass(frozen=True)
class MedianRecord:
    """The global estimate published to ``medians`` (key ``global``)."""

    n: int
    """Numbers summarised across all shards (the sum of the shards' counts)."""
    shards: int
    """Shards with a snapshot in the estimate."""
    median: QuantileBand
    """The global median with the values at ranks 0.5 -+ rank_error."""
    rank_error: float
    """The merged sketch's normalized rank error (99% confidence)."""
    quantiles: tuple[QuantileEstimate, ...]
    """The configured quantiles."""
    ts: int
    """Publication time, epoch milliseconds."""
    rejected: int = 0
    """Rejected input across all shards, as reported by their snapshots."""

    def to_json(self) -> bytes:
        """The record as documented in the README."""
        body: dict[str, Any] = {
            "v": MEDIAN_RECORD_VERSION,
            "n": self.n,
            "shards": self.shards,
            "median": _json_float(self.median.value),
            "lower": _json_float(self.median.lower),
            "upper": _json_float(self.median.upper),
            "rank_error": self.rank_error,
            "quantiles": {quantile_key(e.q): _band_json(e.band) for e in self.quantiles},
            "rejected": self.rejected,
            "ts": self.ts,
        }
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, data: bytes) -> MedianRecord:
        """Parse a record; refuses unknown versions."""
        body = orjson.loads(data)
        if not isinstance(body, dict) or body.get("v") != MEDIAN_RECORD_VERSION:
            version = body.get("v") if isinstance(body, dict) else None
            raise ValueError(f"unsupported median record version {version!r} (supported: {MEDIAN_RECORD_VERSION})")
        quantiles = tuple(
            QuantileEstimate(float(key), QuantileBand(*(_float(band[f]) for f in ("value", "lower", "upper"))))
            for key, band in body["quantiles"].items()
        )
        median = QuantileBand(_float(body["median"]), _float(body["lower"]), _float(body["upper"]))
        return cls(
            int(body["n"]),
            int(body["shards"]),
            median,
            float(body["rank_error"]),
            quantiles,
            int(body["ts"]),
            int(body.get("rejected", 0)),
        )


@dataclass(frozen=True)
class DeadLetter:
    """A rejected input record, sent to ``dead-letters`` with its reason."""

    reason: str
    """Why it was rejected (a :class:`~pipeline.core.codec.Reason` or snapshot error reason)."""
    detail: str
    """What exactly was wrong."""
    topic: str
    """Source topic."""
    partition: int
    """Source partition."""
    offset: int
    """Source offset."""
    value: bytes | None
    """The original message value, untouched."""
    bad_elements: tuple[tuple[int, str], ...] = ()
    """For a partially rejected batch: (element index, reason) of each dropped element."""

    def to_json(self) -> bytes:
        """JSON with the original bytes in base64, readable with any consumer."""
        body = {
            "v": DEAD_LETTER_VERSION,
            "reason": self.reason,
            "detail": self.detail,
            "source": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "value_b64": None if self.value is None else base64.b64encode(self.value).decode("ascii"),
            "bad_elements": [{"index": i, "reason": r} for i, r in self.bad_elements],
        }
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, data: bytes) -> DeadLetter:
        """Parse a dead letter (for tools and tests)."""
        body = orjson.loads(data)
        if body.get("v") != DEAD_LETTER_VERSION:
            raise ValueError(f"unsupported dead letter version {body.get('v')!r}")
        source = body["source"]
        raw = body["value_b64"]
        return cls(
            body["reason"],
            body["detail"],
            source["topic"],
            int(source["partition"]),
            int(source["offset"]),
            None if raw is None else base64.b64decode(raw),
            tuple((int(e["index"]), str(e["reason"])) for e in body["bad_elements"]),
        )


def _band_json(band: QuantileBand) -> dict[str, float | None]:
    return {"value": _json_float(band.value), "lower": _json_float(band.lower), "upper": _json_float(band.upper)}


def _json_float(value: float) -> float | None:
    # JSON has no NaN: an empty sketch's quantiles are null.
    return None if math.isnan(value) else value


def _float(value: object) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value
