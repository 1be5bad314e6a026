"""What the HTTP API answers, as plain data: parsing ``q``, and the bodies of every endpoint.

No Faust and no I/O here: the views in :mod:`pipeline.app.api_views` gather the
live objects (the latest :class:`~pipeline.core.wire.MedianRecord`, the merged
sketch, the shards' states) and these functions turn them into JSON-ready dicts.

Where an answer comes from, and what its bound covers:

* ``source = "record"``: a ``medians`` record. Each quantile's ``rank_bound`` is
  the record's (``rank_error`` + ``theta`` under the budget rule), and it covers
  every number the shards had ingested (``bound_covers = "ingested"``); without
  a budget it covers the ``n`` numbers the record reflects (``"reflected"``).
* ``source = "merged_sketch"``: the aggregator's merged sketch, now, for a ``q``
  no record carries. The shards spend their budget only on the quantiles the
  records carry, so here the bound is the merged sketch's own ``rank_error``
  over the ``n`` numbers it reflects (``"reflected"``); ``pending`` says how many
  ingested numbers it does not reflect yet.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import datasketches

from pipeline.core.sketch import QuantileBand, quantile_band
from pipeline.core.wire import MedianRecord

__all__ = [
    "MAX_QUANTILES",
    "MAX_Q_TEXT",
    "ApiError",
    "WorkerCondition",
    "band_body",
    "error_body",
    "health_answer",
    "median_answer",
    "newest_record",
    "parse_quantiles",
    "quantiles_from_record",
    "quantiles_from_sketch",
    "record_quantiles",
]

logger = logging.getLogger(__name__)

MAX_QUANTILES = 1000
"""Quantiles one request may ask for (more is a 400 saying so, as long as the request line
fits the web server's limit: 64 KiB, see :data:`pipeline.app.api_views.MAX_REQUEST_LINE`)."""
MAX_Q_TEXT = 64
"""Characters one ``q`` value may have (a double needs at most 24)."""


class ApiError(Exception):
    """A request the API refuses, with its HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return error_body(self.status, self.message, **self.extra)


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    """The one shape of every error the API returns: ``{"status", "error", ...}``."""
    return {"status": status, "error": message, **extra}


def parse_quantiles(raw: Sequence[str], default: Sequence[float]) -> tuple[float, ...]:
    """Parse the ``q`` query values (each may be a comma-separated list) into quantiles.

    No ``q`` at all means ``default`` (the configured quantiles). Order is kept and
    duplicates are dropped. Raises :class:`ApiError` (400) naming the bad value.
    """
    if not raw:
        return tuple(default)
    parts = [part.strip() for value in raw for part in value.split(",")]
    if len(parts) > MAX_QUANTILES:
        raise ApiError(400, f"too many quantiles: {len(parts)} given, at most {MAX_QUANTILES} per request")
    seen: dict[float, None] = {}
    for index, part in enumerate(parts):
        seen.setdefault(_parse_one(part, index), None)
    return tuple(seen)


def _parse_one(text: str, index: int) -> float:
    where = f"q value #{index + 1}"
    if not text:
        raise ApiError(400, f"{where} is empty: give numbers in [0, 1] separated by commas, e.g. q=0.5,0.9,0.99")
    shown = text if len(text) <= MAX_Q_TEXT else text[:MAX_Q_TEXT] + "..."
    if len(text) > MAX_Q_TEXT:
        raise ApiError(400, f"{where} {shown!r} is too long (at most {MAX_Q_TEXT} characters)")
    try:
        q = float(text)
    except ValueError:
        raise ApiError(400, f"{where} {shown!r} is not a number; quantiles are numbers in [0, 1]") from None
    if not math.isfinite(q):
        raise ApiError(400, f"{where} {shown!r} is not a finite number; quantiles are numbers in [0, 1]")
    if not 0.0 <= q <= 1.0:
        raise ApiError(400, f"{where} {shown!r} is outside [0, 1]")
    return q


def newest_record(*records: MedianRecord | None) -> MedianRecord | None:
    """The newest of the records at hand (by ``ts``; the first on a tie), or None."""
    newest: MedianRecord | None = None
    for record in records:
        if record is not None and (newest is None or record.ts > newest.ts):
            newest = record
    return newest


def _number(value: float) -> float | None:
    # JSON has no NaN: an empty sketch's quantile is null.
    return None if math.isnan(value) else value


def band_body(band: QuantileBand) -> dict[str, float | None]:
    """A band as JSON: value, lower, upper (null for an empty sketch's NaN)."""
    return {"value": _number(band.value), "lower": _number(band.lower), "upper": _number(band.upper)}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _estimate_meta(
    source: str, n: int, shards: int, sources: int, ts: int, now_ms: int, rank_error: float, theta: float | None,
    covers: str,
) -> dict[str, Any]:  # fmt: skip
    return {
        "source": source,
        "n": n,
        "shards": shards,
        "sources": sources,
        "ts": ts,
        "time": _iso(ts),
        "age_s": max(now_ms - ts, 0) / 1000,
        "rank_error": rank_error,
        "theta": theta,
        "bound_covers": covers,
    }


def _record_meta(record: MedianRecord, now_ms: int) -> dict[str, Any]:
    covers = "ingested" if record.theta is not None else "reflected"
    meta = _estimate_meta(
        "record", record.n, record.shards, record.sources, record.ts, now_ms, record.rank_error, record.theta, covers
    )
    stale = {"stale_shards": record.stale_shards, "stale_sources": record.stale_sources}
    return meta | {"pending": record.pending, **stale, "rejected": record.rejected}


def median_answer(record: MedianRecord, now_ms: int) -> dict[str, Any]:
    """``GET /median``: the record's median, its interval and bound, and the estimate's facts."""
    return _record_meta(record, now_ms) | {"median": band_body(record.median), "rank_bound": record.rank_bound}


def _record_bands(record: MedianRecord) -> dict[float, tuple[QuantileBand, float]]:
    bands = {estimate.q: (estimate.band, record.bound_of(estimate)) for estimate in record.quantiles}
    bands.setdefault(0.5, (record.median, record.rank_bound))
    return bands


def quantiles_from_record(record: MedianRecord, qs: Iterable[float], now_ms: int) -> dict[str, Any] | None:
    """``GET /quantiles`` from a record, or None when it does not carry every requested ``q``."""
    bands = _record_bands(record)
    wanted = tuple(qs)
    if any(q not in bands for q in wanted):
        return None
    rows = [{"q": q, **band_body(bands[q][0]), "rank_bound": bands[q][1]} for q in wanted]
    return _record_meta(record, now_ms) | {"quantiles": rows}


def record_quantiles(record: MedianRecord) -> tuple[float, ...]:
    """The quantiles a record carries (its configured ones and the median), ascending."""
    return tuple(sorted(_record_bands(record)))


def quantiles_from_sketch(
    sketch: datasketches.kll_doubles_sketch,
    qs: Iterable[float],
    *,
    n: int,
    shards: int,
    sources: int,
    pending: int,
    stale_shards: int,
    stale_sources: int,
    now_ms: int,
) -> dict[str, Any]:
    """``GET /quantiles`` from the merged sketch, now: bound = its rank error over the ``n`` it reflects.

    ``shards`` and ``sources`` count the partition and the edge shards in it;
    ``pending`` is both kinds' numbers ingested and not in a snapshot yet.
    """
    error = float(sketch.normalized_rank_error(False))
    rows = [{"q": q, **band_body(quantile_band(sketch, q, error)), "rank_bound": error} for q in qs]
    meta = _estimate_meta("merged_sketch", n, shards, sources, now_ms, now_ms, error, None, "reflected")
    stale = {"stale_shards": stale_shards, "stale_sources": stale_sources}
    return meta | {"pending": pending, **stale, "quantiles": rows}


@dataclass(frozen=True)
class WorkerCondition:
    """What ``GET /health`` looks at, read from the running worker."""

    started: bool
    """The worker's services are running."""
    rebalancing: bool
    """A consumer-group rebalance is in progress."""
    recovering: bool
    """Tables are being restored from their changelogs."""
    hosted: bool
    """This worker hosts the aggregator."""
    restored: bool
    """The aggregator's state is rebuilt (only meaningful when hosted)."""
    owned: tuple[int, ...]
    """Shards this worker owns."""
    record_ts: int | None
    """Time of the newest ``medians`` record this worker has (None: none yet)."""


def health_answer(condition: WorkerCondition, now_ms: int) -> tuple[int, dict[str, Any]]:
    """``GET /health``: (200, ready) or (503, not ready with the reason)."""
    c = condition
    reason = None
    if not c.started:
        reason = "the worker is starting"
    elif c.rebalancing:
        reason = "the consumer group is rebalancing"
    elif c.recovering:
        reason = "restoring the shards' state from the changelog"
    elif c.hosted and not c.restored:
        reason = "this worker hosts the aggregator and is still rebuilding its state from the sketches topic"
    body = {
        "ready": reason is None,
        "reason": reason,
        "aggregator_hosted": c.hosted,
        "aggregator_restored": c.hosted and c.restored,
        "shards_owned": list(c.owned),
        "has_estimate": c.record_ts is not None,
        "estimate_age_s": None if c.record_ts is None else max(now_ms - c.record_ts, 0) / 1000,
        "ts": now_ms,
    }
    return (200 if reason is None else 503), body
