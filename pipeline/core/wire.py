"""Typed, versioned messages that cross Kafka: snapshots, median records, dead letters.

* :class:`SketchSnapshot` goes to the compacted ``sketches`` topic, key = shard id.
  Binary envelope (see :mod:`pipeline.core.envelope`) with the standard
  DataSketches KLL serialization as payload.
* :class:`ShardProgress` (a heartbeat) goes to ``sketches`` too, key
  ``<shard>.progress`` (its own key, so that compaction never replaces a shard's
  snapshot by a heartbeat): the same envelope, header only, no sketch.
* :class:`MedianRecord` goes to ``medians``, key ``global``, as JSON (version 2;
  version 1 records are still read).
* dead letters go to ``dead-letters``: :mod:`pipeline.core.dead_letter`.

A reader refuses a version it does not know instead of guessing. The keys, the
order of a shard's snapshots and what a reader of ``sketches`` accepts are the
topic's contract: :mod:`pipeline.core.sketches_contract`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import datasketches
import orjson

from pipeline.core.envelope import Envelope, EnvelopeError, pack_envelope, unpack_envelope
from pipeline.core.sketch import QuantileBand, ShardState, quantile_band
from pipeline.core.snapshot_checks import check_snapshot_contents, kll_layout

if TYPE_CHECKING:
    from pipeline.core.snapshot_checks import AnySnapshot

__all__ = [
    "MEDIAN_RECORD_VERSION",
    "PROGRESS_VERSION",
    "SNAPSHOT_VERSION",
    "MedianRecord",
    "QuantileEstimate",
    "ShardProgress",
    "SketchSnapshot",
    "SnapshotError",
    "parse_sketches_value",
    "quantile_key",
]

logger = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"DMSK"
SNAPSHOT_VERSION = 1
PROGRESS_VERSION = 1
"""Version of the optional ``progress`` header field (the envelope's version stays 1: readers of
version 1 read snapshots exactly as before, and only a progress message carries the field)."""
MEDIAN_RECORD_VERSION = 2
_MEDIAN_RECORD_VERSIONS = (1, 2)

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
    urgent: bool = False
    """Sent under the error-budget rule: the aggregator should publish at once rather than at its
    next interval, because the latest record no longer covers this shard fully until a record reflects
    this snapshot. Optional header field ``"urgent": true`` (14 bytes), absent otherwise: version-1
    readers ignore it."""

    @classmethod
    def from_state(cls, state: ShardState, ts: int, urgent: bool = False) -> SketchSnapshot:
        """Snapshot a shard's current state (``urgent``: see the field)."""
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
            urgent=urgent,
        )

    def sketch(self) -> datasketches.kll_doubles_sketch:
        """Deserialize the carried sketch."""
        return datasketches.kll_doubles_sketch.deserialize(self.sketch_bytes)

    def to_bytes(self) -> bytes:
        """Serialize to the wire format."""
        header = {"shard": self.shard, "last_offset": self.last_offset, **sketch_header(self)}
        return pack_envelope(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, header, self.sketch_bytes)

    @classmethod
    def from_bytes(cls, data: bytes) -> SketchSnapshot:
        """Parse and validate; raises :class:`SnapshotError` naming what is wrong."""
        return cls._from_envelope(unpack_envelope(data, SNAPSHOT_MAGIC, SNAPSHOT_VERSION))

    @classmethod
    def _from_envelope(cls, envelope: Envelope) -> SketchSnapshot:
        h = envelope.header
        if "progress" in h:
            raise SnapshotError("not_a_snapshot", "a progress message (heartbeat): read it with parse_sketches_value")
        try:
            snapshot = cls(shard=_int(h["shard"]), last_offset=_int(h["last_offset"]), **sketch_fields(envelope))
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError("bad_header", f"missing or mistyped field: {exc!r}") from None
        snapshot._check_sketch()
        return snapshot

    def _check_sketch(self) -> None:
        if self.shard < 0 or self.n < 0 or self.last_offset < -1:
            raise SnapshotError(
                "bad_header", f"negative shard, n or offset in {self.shard}/{self.n}/{self.last_offset}"
            )
        check_carried_sketch(self)


@dataclass(frozen=True)
class ShardProgress:
    """A heartbeat: the shard is alive, and how far it has ingested beyond its last snapshot.

    Wire form: the snapshot envelope (magic ``DMSK``, version 1) with an empty
    payload and the header ``{"shard": s, "progress": {"v": 1, "n", "ingested",
    "last_offset", "ts"}}``. About 100 bytes (9-byte prefix plus ~90 bytes of JSON
    for realistic counts and timestamps), against ~5.5 KB for a snapshot, so a
    shard can say "alive, and this much is pending" every few seconds for free.
    """

    shard: int
    """The shard id."""
    n: int
    """Numbers in the shard's last snapshot sent (what the aggregator reflects of it)."""
    ingested: int
    """Numbers the shard has ingested now (>= n): ``ingested - n`` are pending."""
    last_offset: int
    """Offset of the last source record ingested now (orders heartbeats and snapshots of one shard)."""
    ts: int
    """Send time, epoch milliseconds."""

    @property
    def pending(self) -> int:
        """Numbers ingested but not in the last snapshot."""
        return self.ingested - self.n

    def to_bytes(self) -> bytes:
        """Serialize to the wire format."""
        progress = {"v": PROGRESS_VERSION, "n": self.n, "ingested": self.ingested,
                    "last_offset": self.last_offset, "ts": self.ts}  # fmt: skip
        return pack_envelope(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, {"shard": self.shard, "progress": progress}, b"")

    @classmethod
    def from_bytes(cls, data: bytes) -> ShardProgress:
        """Parse and validate; raises :class:`SnapshotError` naming what is wrong."""
        return cls._from_envelope(unpack_envelope(data, SNAPSHOT_MAGIC, SNAPSHOT_VERSION))

    @classmethod
    def _from_envelope(cls, envelope: Envelope) -> ShardProgress:
        header = envelope.header
        body = header.get("progress")
        if not isinstance(body, dict):
            raise SnapshotError("bad_header", "no progress field: not a progress message")
        if body.get("v") != PROGRESS_VERSION:
            raise SnapshotError("unsupported_version", f"progress version {body.get('v')!r} is not {PROGRESS_VERSION}")
        try:
            progress = cls(
                _int(header["shard"]), _int(body["n"]), _int(body["ingested"]), _int(body["last_offset"]),
                _int(body["ts"]),
            )  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise SnapshotError("bad_header", f"missing or mistyped progress field: {exc!r}") from None
        if progress.shard < 0 or progress.n < 0 or progress.ingested < progress.n or progress.last_offset < -1:
            raise SnapshotError("bad_header", f"inconsistent progress counts in {progress}")
        if envelope.payload:
            raise SnapshotError("bad_header", f"a progress message carries no payload, found {len(envelope.payload)} B")
        return progress


def sketch_header(snapshot: AnySnapshot) -> dict[str, Any]:
    """The header fields every snapshot carries, a partition shard's and an edge shard's alike."""
    header: dict[str, Any] = {
        "n": snapshot.n,
        "min": _json_float(snapshot.min),
        "max": _json_float(snapshot.max),
        "median": _band_json(snapshot.median),
        "rank_error": snapshot.rank_error,
        "k": snapshot.k,
        "ts": snapshot.ts,
        "rejected": snapshot.rejected,
    }
    if snapshot.urgent:
        header["urgent"] = True
    return header


def sketch_fields(envelope: Envelope) -> dict[str, Any]:
    """The fields :func:`sketch_header` wrote, typed (``KeyError``/``TypeError`` for a missing or mistyped one)."""
    h = envelope.header
    return {
        "n": _int(h["n"]),
        "min": _float(h["min"]),
        "max": _float(h["max"]),
        "median": QuantileBand(*(_float(h["median"][f]) for f in ("value", "lower", "upper"))),
        "rank_error": _float(h["rank_error"]),
        "k": _int(h["k"]),
        "ts": _int(h["ts"]),
        "rejected": _int(h["rejected"]),
        "sketch_bytes": envelope.payload,
        "urgent": _bool(h.get("urgent", False)),
    }


def check_carried_sketch(snapshot: AnySnapshot) -> None:
    """Refuse a snapshot whose sketch does not deserialize, or disagrees with its header or itself."""
    # The layout first, in Python: the C++ deserializer trusts the stated sizes and
    # reads past a short buffer (a truncated sketch crashed a test process).
    kll_layout(snapshot.sketch_bytes)
    try:
        sketch = datasketches.kll_doubles_sketch.deserialize(snapshot.sketch_bytes)
    # The bytes are untrusted: whatever the C++ deserializer raises (IndexError
    # for a truncated buffer, RuntimeError, ValueError, ...) is a bad sketch.
    except Exception as exc:
        raise SnapshotError("bad_sketch", f"sketch does not deserialize: {exc}") from None
    if int(sketch.n) != snapshot.n or int(sketch.k) != snapshot.k:
        raise SnapshotError(
            "inconsistent", f"header says n={snapshot.n} k={snapshot.k}, sketch has n={sketch.n} k={sketch.k}"
        )
    # A forgery can be well formed: item weights, NaN items and header statistics are checked
    # here, so that every reader (the aggregator and its rebuild from ``sketches``) refuses it.
    check_snapshot_contents(snapshot, sketch)


def parse_sketches_value(data: bytes) -> SketchSnapshot | ShardProgress:
    """A value read from ``sketches``: a snapshot or a progress message; :class:`SnapshotError` otherwise."""
    envelope = unpack_envelope(data, SNAPSHOT_MAGIC, SNAPSHOT_VERSION)
    if "progress" in envelope.header:
        return ShardProgress._from_envelope(envelope)
    return SketchSnapshot._from_envelope(envelope)  # unpacked once: the aggregator reads thousands a second


@dataclass(frozen=True)
class QuantileEstimate:
    """One served quantile."""

    q: float
    """The quantile's rank, in [0, 1]."""
    band: QuantileBand
    """The estimate and its values at ranks q -+ rank_bound."""
    rank_bound: float | None = None
    """The total bound on the value's rank error: the sketch's rank error plus the emission
    budget theta (None: the record's ``rank_error``, as in version 1 records)."""


@dataclass(frozen=True)
class MedianRecord:
    """The global estimate published to ``medians`` (key ``global``).

    Version 2 adds the emission budget: each quantile's ``rank_bound`` is the
    sketch's ``rank_error`` plus ``theta``, and covers every number the shards had
    ingested (not only the ``n`` reflected), once every shard has seen the record
    (see :mod:`pipeline.core.budget`). ``lower``/``upper`` are at q -+ rank_bound.
    """

    n: int
    """Numbers summarised across all shards (the sum of the shards' counts)."""
    shards: int
    """Shards with a snapshot in the estimate."""
    median: QuantileBand
    """The global median with the values at ranks 0.5 -+ rank_bound."""
    rank_error: float
    """The merged sketch's normalized rank error (99% confidence): its part of the bound."""
    quantiles: tuple[QuantileEstimate, ...]
    """The configured quantiles."""
    ts: int
    """Publication time, epoch milliseconds."""
    rejected: int = 0
    """Rejected input across all shards, as reported by their snapshots."""
    theta: float | None = None
    """The emission rule's error budget, added to ``rank_error`` in each ``rank_bound``
    (None: the rule bounds nothing, and the record covers only the ``n`` reflected numbers)."""
    pending: int = 0
    """Numbers the shards reported ingesting (in their latest messages) that ``n`` does not reflect yet."""
    stale_shards: int = 0
    """Shards not heard from (snapshot or heartbeat) for longer than the aggregator's staleness age
    (twice ``heartbeat_ms`` is the suggested age): their worker is down, or their input paused."""
    sources: int = 0
    """Edge shards (sources that sketch their own numbers) with a snapshot in the estimate; ``n``
    counts their numbers too."""
    stale_sources: int = 0
    """Edge shards not heard from for longer than the staleness age (their numbers stay in ``n``)."""

    @property
    def rank_bound(self) -> float:
        """The total bound of the median (and of every quantile this record's shards track)."""
        return self.rank_error + (self.theta or 0.0)

    def bound_of(self, estimate: QuantileEstimate) -> float:
        """The rank bound of one served quantile (the record's, when the entry states none)."""
        return self.rank_bound if estimate.rank_bound is None else estimate.rank_bound

    def to_json(self) -> bytes:
        """The record as documented in the README."""
        quantiles = {quantile_key(e.q): {**_band_json(e.band), "rank_bound": self.bound_of(e)} for e in self.quantiles}
        body: dict[str, Any] = {
            "v": MEDIAN_RECORD_VERSION,
            "n": self.n,
            "shards": self.shards,
            "median": _json_float(self.median.value),
            "lower": _json_float(self.median.lower),
            "upper": _json_float(self.median.upper),
            "rank_error": self.rank_error,
            "theta": self.theta,
            "quantiles": quantiles,
            "pending": self.pending,
            "stale_shards": self.stale_shards,
            "sources": self.sources,
            "stale_sources": self.stale_sources,
            "rejected": self.rejected,
            "ts": self.ts,
        }
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, data: bytes) -> MedianRecord:
        """Parse a record of version 2 or 1; refuses other versions."""
        body = orjson.loads(data)
        version = body.get("v") if isinstance(body, dict) else None
        if version not in _MEDIAN_RECORD_VERSIONS or isinstance(version, bool):
            raise ValueError(f"unsupported median record version {version!r} (supported: {_MEDIAN_RECORD_VERSIONS})")
        rank_error = float(body["rank_error"])
        # Version 1 placed lower/upper at q -+ rank_error: that is its rank bound.
        quantiles = tuple(
            QuantileEstimate(
                float(key),
                QuantileBand(*(_float(band[f]) for f in ("value", "lower", "upper"))),
                rank_error if version == 1 else float(band["rank_bound"]),
            )
            for key, band in body["quantiles"].items()
        )
        median = QuantileBand(_float(body["median"]), _float(body["lower"]), _float(body["upper"]))
        theta = body.get("theta")
        return cls(
            int(body["n"]),
            int(body["shards"]),
            median,
            rank_error,
            quantiles,
            int(body["ts"]),
            int(body.get("rejected", 0)),
            None if theta is None else float(theta),
            int(body.get("pending", 0)),
            int(body.get("stale_shards", 0)),
            int(body.get("sources", 0)),
            int(body.get("stale_sources", 0)),
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


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value
