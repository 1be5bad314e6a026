"""``GET /shards`` at any shard count: a summary, and one filtered, sorted page of rows.

No Faust and no I/O here: the views gather one :class:`ShardRow` per shard the
worker knows (cheap facts only) and these functions parse the request, summarise
every row, and pick the page. At 10,000 shards the page is chosen with a bounded
heap (``heapq.nsmallest`` of offset + limit rows), never by sorting all of them,
and the distributions use a linear-time selection (numpy's partition). The same
selection picks the few shards ``/metrics``, the dashboard and ``dmedian shards``
show one by one (:func:`worst`).
"""

from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from pipeline.core.api_answers import ApiError, band_body
from pipeline.core.sketch import QuantileBand
from pipeline.core.source_listing import sources_unknown

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "SHARD_PARAMETERS",
    "SORT_KEYS",
    "ShardPage",
    "ShardQuery",
    "ShardRow",
    "distribution",
    "histogram",
    "parse_shard_query",
    "row_body",
    "select_page",
    "shards_answer",
    "shards_summary",
    "worst",
    "worst_first",
]

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
"""Rows per page when ``limit`` is not given."""
MAX_LIMIT = 1000
"""The most rows one page may have."""
SORT_KEYS = ("shard", "age", "n", "lag")
"""What ``sort`` accepts."""
SHARD_PARAMETERS = ("limit", "offset", "stale", "sort", "order")
"""The query parameters ``/shards`` reads."""

_MAX_TEXT = 64
_INTEGER = re.compile(r"-?[0-9]+")
_T = TypeVar("_T")

Sort = Literal["shard", "age", "n", "lag"]
Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class ShardRow:
    """What one worker knows of one shard (None: it does not know)."""

    shard: int
    """The shard id."""
    owned_here: bool
    """Whether this worker owns the shard (and so knows its current state)."""
    n: int | None
    """Numbers in the shard: its state's count where owned, else its latest snapshot's."""
    median: QuantileBand | None
    """The shard's local median with the values at its rank-error bounds (filled for the page only)."""
    last_snapshot_ms: int | None
    """When its latest snapshot was made (as the aggregator saw it, or as this worker sent it)."""
    stale: bool | None
    """Silent (no snapshot nor heartbeat) for longer than the staleness age."""
    snapshots_sent: int | None
    """Snapshots of it this worker sent since it started."""
    snapshot_bytes_sent: int | None
    """Their bytes."""
    lag: int | None = None
    """Records of its input partition this worker has not read yet (owned shards only)."""
    last_offset: int | None = None
    """The last input offset its state (or latest snapshot) reflects."""
    rejected: int | None = None
    """Its rejected messages or elements, all reasons."""

    def age_s(self, now_ms: int) -> float | None:
        """Seconds since its latest snapshot (None: none known)."""
        return None if self.last_snapshot_ms is None else max(now_ms - self.last_snapshot_ms, 0) / 1000

    @property
    def status(self) -> str:
        """``live``, ``stale`` or ``unknown``."""
        return "unknown" if self.stale is None else ("stale" if self.stale else "live")


@dataclass(frozen=True)
class ShardQuery:
    """One ``/shards`` request: which rows, in which order, which page."""

    limit: int = DEFAULT_LIMIT
    """Rows in the page (0: the summary only)."""
    offset: int = 0
    """Rows skipped before the page."""
    stale: bool | None = None
    """True: stale shards only; False: the others only; None: every shard."""
    sort: Sort = "shard"
    """The sort key: shard id, snapshot age, count, or consumer lag."""
    order: Order = "asc"
    """asc or desc (shards without the key's value come last either way; ties go by shard id)."""


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name) or []
    if len(values) > 1:
        raise ApiError(400, f"{name} is given {len(values)} times; give it once")
    if not values:
        return None
    text = values[0]
    if len(text) > _MAX_TEXT:
        raise ApiError(400, f"{name} {text[:_MAX_TEXT] + '...'!r} is too long (at most {_MAX_TEXT} characters)")
    return text


def _integer(params: Mapping[str, Sequence[str]], name: str, default: int, top: int | None) -> int:
    text = _one(params, name)
    if text is None:
        return default
    where = f"[0, {top}]" if top is not None else ">= 0"
    if not _INTEGER.fullmatch(text):
        raise ApiError(400, f"{name} {text!r} is not a whole number {where}")
    value = int(text)
    if value < 0 or (top is not None and value > top):
        raise ApiError(400, f"{name} {text!r} is outside {where}")
    return value


def parse_shard_query(params: Mapping[str, Sequence[str]]) -> ShardQuery:
    """The request's parameters (each name to every value given); :class:`ApiError` (400) names a bad one.

    ``order`` defaults to ``desc`` for age, n and lag (the worst first) and to ``asc`` for shard.
    """
    limit = _integer(params, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    offset = _integer(params, "offset", 0, None)
    stale_text = _one(params, "stale")
    stale: bool | None = None
    if stale_text is not None:
        if stale_text.lower() not in ("true", "false"):
            raise ApiError(400, f"stale {stale_text!r} is not true or false")
        stale = stale_text.lower() == "true"
    sort = _one(params, "sort") or "shard"
    if sort not in SORT_KEYS:
        raise ApiError(400, f"sort {sort!r} is not one of {', '.join(SORT_KEYS)}")
    order = _one(params, "order") or ("asc" if sort == "shard" else "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"order {order!r} is not asc or desc")
    return ShardQuery(limit, offset, stale, sort, order)  # type: ignore[arg-type]


def _sort_key(query: ShardQuery) -> Callable[[ShardRow], tuple[bool, float, int]]:
    sign = 1 if query.order == "asc" else -1
    if query.sort == "shard":
        return lambda row: (False, sign * row.shard, 0)
    if query.sort == "age":
        # An older snapshot is a larger age: age order is the reverse of snapshot-time order.
        return lambda row: (row.last_snapshot_ms is None, -sign * (row.last_snapshot_ms or 0), row.shard)
    if query.sort == "n":
        return lambda row: (row.n is None, sign * (row.n or 0), row.shard)
    return lambda row: (row.lag is None, sign * (row.lag or 0), row.shard)


@dataclass(frozen=True)
class ShardPage:
    """The rows of one page, and where the next begins."""

    rows: list[ShardRow]
    """The page, in order."""
    total: int
    """Rows matching the filter (every page together)."""
    next_offset: int | None
    """The ``offset`` of the next page (None: this is the last)."""


def select_page(rows: Iterable[ShardRow], query: ShardQuery) -> ShardPage:
    """Filter, order and cut one page: a heap of offset + limit rows, not a sort of all of them."""
    matching = [row for row in rows if query.stale is None or (row.stale is True) == query.stale]
    end = query.offset + query.limit
    key = _sort_key(query)
    ordered = heapq.nsmallest(end, matching, key) if end < len(matching) else sorted(matching, key=key)
    page = ordered[query.offset : end]
    return ShardPage(page, len(matching), end if end < len(matching) else None)


def worst(items: Iterable[_T], count: int, key: Callable[[_T], Any]) -> list[_T]:
    """The ``count`` items with the largest key, largest first (-1: all of them, in order; 0: none)."""
    if count == 0:
        return []
    if count < 0:
        return sorted(items, key=key, reverse=True)
    return heapq.nlargest(count, items, key)


def worst_first(now_ms: int) -> Callable[[ShardRow], tuple[bool, float, int]]:
    """The key that ranks shards worst-first with :func:`worst`: stale, then the oldest snapshot, then lag.

    A shard without a snapshot ranks below any with one: with no lag either, it never had a number.
    """

    def key(row: ShardRow) -> tuple[bool, float, int]:
        age = row.age_s(now_ms)
        return row.stale is True, -1.0 if age is None else age, row.lag or 0

    return key


def histogram(values: Sequence[float], bins: int) -> list[dict[str, float]]:
    """``bins`` equal-width bins from the least to the greatest value: [{lo, hi, count}] ([] when empty)."""
    if len(values) == 0:
        return []
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    return [{"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(count)} for i, count in enumerate(counts)]


def distribution(values: Sequence[float] | np.ndarray[Any, Any], integer: bool = False) -> dict[str, float] | None:
    """min, p50, p90 and max of the values (nearest rank: each is one of the values); None when empty."""
    if len(values) == 0:
        return None
    data = np.asarray(values, dtype=np.float64)
    # inverted_cdf: the value at rank ceil(q * n), found by partition in linear time.
    p50, p90 = np.quantile(data, [0.5, 0.9], method="inverted_cdf")
    cast: Callable[[Any], float] = int if integer else float
    return {"min": cast(data.min()), "p50": cast(p50), "p90": cast(p90), "max": cast(data.max())}


def shards_summary(rows: Sequence[ShardRow], now_ms: int) -> dict[str, Any]:
    """Counts, totals and distributions over every row (whatever the page's filter)."""
    counts = [row.n for row in rows if row.n is not None]
    ages = [age for row in rows if (age := row.age_s(now_ms)) is not None]
    lags = [row.lag for row in rows if row.lag is not None]
    return {
        "shards": len(rows),
        "owned_here": sum(1 for row in rows if row.owned_here),
        "stale": sum(1 for row in rows if row.stale is True),
        "unknown": sum(1 for row in rows if row.stale is None),
        "n_total": sum(counts),
        "n": distribution(counts, integer=True),
        "age_s": distribution(ages),
        "lag_total": sum(lags) if lags else None,
    }


def row_body(row: ShardRow, now_ms: int) -> dict[str, Any]:
    """One shard as ``/shards`` (and the dashboard) show it."""
    return {
        "shard": row.shard,
        "owned_here": row.owned_here,
        "n": row.n,
        "median": None if row.median is None else band_body(row.median),
        "last_snapshot_age_s": row.age_s(now_ms),
        "status": row.status,
        "snapshots_sent": row.snapshots_sent,
        "snapshot_bytes_sent": row.snapshot_bytes_sent,
        "lag": row.lag,
        "last_offset": row.last_offset,
        "rejected": row.rejected,
    }


def shards_answer(
    rows: Sequence[ShardRow],
    page: ShardPage,
    query: ShardQuery,
    *,
    now_ms: int,
    complete: bool,
    stale_after_ms: int,
    sources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``GET /shards``: the summary of every row, the page's rows, and the edge shards.

    ``sources``: :func:`~pipeline.core.source_listing.sources_answer` on the
    aggregator's worker; None elsewhere (the answer then says it does not know them).
    """
    return {
        "complete": complete,
        "ts": now_ms,
        "stale_after_s": stale_after_ms / 1000,
        "summary": shards_summary(rows, now_ms),
        "total": page.total,
        "limit": query.limit,
        "offset": query.offset,
        "next_offset": page.next_offset,
        "sort": query.sort,
        "order": query.order,
        "shards": [row_body(row, now_ms) for row in page.rows],
        "sources": sources_unknown() if sources is None else sources,
    }
