"""The edge shards in ``GET /shards``: one row per source, a summary, and the few listed (stale first).

No Faust and no I/O here: the view hands over the aggregator's latest snapshot of
every edge shard and its :class:`~pipeline.core.source_contract.SourceBook` (which
says when each was last heard from), and these functions make the rows, summarise
them, and pick the ``limit`` listed: the stale ones first, then the longest
unheard, as the shards' worst-first (a bounded heap, never a sort of all of them).

Only the aggregator's worker knows the edge shards (they send to ``sketches``,
which only it reads): any other worker answers :func:`sources_unknown`.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.core.api_answers import band_body
from pipeline.core.sketch import QuantileBand
from pipeline.core.source_contract import SourceBook
from pipeline.core.source_wire import SourceSnapshot

__all__ = ["SourceRow", "listed_sources", "source_body", "source_rows", "sources_answer", "sources_unknown"]

logger = logging.getLogger(__name__)


def _age_s(now_ms: int, then_ms: int | None) -> float | None:
    # A source's clock may run ahead of ours (the aggregator accepts up to source_clock_ahead_ms): no negative age.
    return None if then_ms is None else max(now_ms - then_ms, 0) / 1000


@dataclass(frozen=True)
class SourceRow:
    """What the aggregator knows of one edge shard (None: it holds no snapshot of it)."""

    name: str
    """The edge shard's name (its source id, and ``@<run token>`` for a source without a state file)."""
    n: int | None
    """Numbers in its latest snapshot."""
    seq: int
    """Sequence number of that snapshot (0: none, only heartbeats)."""
    median: QuantileBand | None
    """Its local median with the values at its rank-error bounds."""
    snapshot_ms: int | None
    """When the snapshot was sent, on the source's clock."""
    heard_ms: int | None
    """When the aggregator last took a message of it, on the aggregator's clock (None: not in its ledger)."""
    stale: bool
    """Not heard from for longer than the staleness age (it stays in the estimate)."""
    rejected: int | None
    """Numbers the source refused (NaN, or infinities when they are not accepted)."""
    k: int | None
    """The KLL accuracy parameter of its sketch."""

    @classmethod
    def of_snapshot(cls, snapshot: SourceSnapshot, heard_ms: int | None, stale: bool) -> SourceRow:
        """The row of an edge shard whose latest snapshot is ``snapshot``."""
        return cls(
            snapshot.source, snapshot.n, snapshot.seq, snapshot.median, snapshot.ts, heard_ms, stale,
            snapshot.rejected, snapshot.k,
        )  # fmt: skip

    @property
    def status(self) -> str:
        """``stale`` or ``live``."""
        return "stale" if self.stale else "live"


def source_rows(
    snapshots: Iterable[SourceSnapshot], book: SourceBook, now_ms: int, stale_after_ms: int
) -> list[SourceRow]:
    """One row per edge shard with a snapshot, and one per stale one that has sent heartbeats only.

    Every stale name of the book gets a row, so the summary's stale count is the
    rows'; a live source that has not sent a snapshot yet has no row (it has no
    numbers in the estimate).
    """
    stale = set(book.stale(now_ms, stale_after_ms))
    rows = [SourceRow.of_snapshot(s, book.heard_ms(s.source), s.source in stale) for s in snapshots]
    held = {row.name for row in rows}
    rows += [
        SourceRow(name, None, book.seq(name), None, None, book.heard_ms(name), True, None, None)
        for name in sorted(stale - held)
    ]
    return rows


def _worst_first(row: SourceRow) -> tuple[bool, int, str]:
    # Stale first, then the longest unheard (one missing from the ledger first of all), then by name.
    return not row.stale, -1 if row.heard_ms is None else row.heard_ms, row.name


def listed_sources(rows: Iterable[SourceRow], limit: int) -> list[SourceRow]:
    """The ``limit`` rows to list: stale first, then the longest unheard, then by name."""
    return heapq.nsmallest(limit, rows, _worst_first) if limit > 0 else []


def source_body(row: SourceRow, now_ms: int) -> dict[str, Any]:
    """One edge shard as ``/shards`` (and the dashboard) show it."""
    return {
        "name": row.name,
        "n": row.n,
        "seq": row.seq,
        "median": None if row.median is None else band_body(row.median),
        "last_snapshot_age_s": _age_s(now_ms, row.snapshot_ms),
        "heard_age_s": _age_s(now_ms, row.heard_ms),
        "status": row.status,
        "rejected": row.rejected,
        "k": row.k,
    }


def sources_answer(rows: Sequence[SourceRow], limit: int, *, now_ms: int, pending: int) -> dict[str, Any]:
    """The ``sources`` object of ``/shards`` on the aggregator's worker: a summary and ``limit`` rows.

    ``pending``: numbers the edge shards said they added that their snapshots do
    not reflect yet (:meth:`SourceBook.pending`).
    """
    return {
        "complete": True,
        "summary": {
            "count": sum(1 for row in rows if row.n is not None),
            "stale": sum(1 for row in rows if row.stale),
            "n_total": sum(row.n for row in rows if row.n is not None),
            "pending": pending,
        },
        "rows": [source_body(row, now_ms) for row in listed_sources(rows, limit)],
    }


def sources_unknown() -> dict[str, Any]:
    """The ``sources`` object of ``/shards`` on a worker that does not host the aggregator (or is rebuilding it)."""
    return {"complete": False, "summary": None, "rows": []}
