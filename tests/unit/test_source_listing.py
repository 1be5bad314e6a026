"""The edge shards in ``/shards``: rows from the aggregator's snapshots and ledger, their order, the summary."""

from __future__ import annotations

import random

import datasketches
import numpy as np

from pipeline.core.sketch import QuantileBand
from pipeline.core.source_contract import SourceBook, SourcePolicy
from pipeline.core.source_listing import (
    SourceRow,
    listed_sources,
    source_body,
    source_rows,
    sources_answer,
    sources_unknown,
)
from pipeline.core.source_wire import SourceProgress, SourceSnapshot

NOW = 1_700_000_000_000
STALE_AFTER_MS = 20_000
BAND = QuantileBand(1.0, 0.5, 1.5)


def _snapshot(name: str, seq: int, values: np.ndarray, ts: int, rejected: int = 0) -> SourceSnapshot:
    sketch = datasketches.kll_doubles_sketch(200)
    sketch.update(values)
    return SourceSnapshot.of_sketch(name, seq, sketch, ts, rejected)


def _book_and_snapshots() -> tuple[SourceBook, list[SourceSnapshot]]:
    """Three edge shards with snapshots (heard 1 s, 30 s and 50 s ago) and one that sent heartbeats only."""
    book = SourceBook(SourcePolicy())
    snapshots = [
        _snapshot("web-1", 3, np.arange(1000.0), NOW - 1_000, rejected=2),
        _snapshot("web-2@k3x9", 1, np.arange(10.0), NOW - 30_000),
        _snapshot("batch", 7, np.arange(500.0), NOW - 50_000),
    ]
    for snapshot in snapshots:
        assert book.admit(snapshot, NOW, heard_ms=snapshot.ts)
    # A heartbeat of web-1 saying it has 40 numbers beyond its snapshot: pending.
    assert book.admit(SourceProgress("web-1", 3, 1000, 1040, NOW - 500), NOW, heard_ms=NOW - 500)
    assert book.admit(SourceProgress("quiet", 0, 0, 0, NOW - 40_000), NOW, heard_ms=NOW - 40_000)
    return book, snapshots


def test_rows_say_what_each_snapshot_holds_and_when_its_source_was_heard() -> None:
    book, snapshots = _book_and_snapshots()
    rows = source_rows(snapshots, book, NOW, STALE_AFTER_MS)
    by_name = {row.name: row for row in rows}
    assert set(by_name) == {"web-1", "web-2@k3x9", "batch", "quiet"}
    web = by_name["web-1"]
    assert (web.n, web.seq, web.rejected, web.k, web.stale) == (1000, 3, 2, 200, False)
    assert (web.snapshot_ms, web.heard_ms) == (NOW - 1_000, NOW - 500)  # a later heartbeat counts as heard
    assert web.median == snapshots[0].median
    assert [by_name[name].status for name in ("web-2@k3x9", "batch")] == ["stale", "stale"]
    # Heartbeats only, and silent: listed (so every stale one is), with nothing of a snapshot.
    quiet = by_name["quiet"]
    assert (quiet.n, quiet.seq, quiet.median, quiet.snapshot_ms, quiet.k) == (None, 0, None, None, None)
    assert (quiet.heard_ms, quiet.stale) == (NOW - 40_000, True)


def test_a_live_source_without_a_snapshot_has_no_row() -> None:
    book = SourceBook(SourcePolicy())
    assert book.admit(SourceProgress("fresh", 0, 0, 5, NOW - 100), NOW)
    assert source_rows([], book, NOW, STALE_AFTER_MS) == []


def test_listed_stale_first_then_longest_unheard_then_by_name() -> None:
    book, snapshots = _book_and_snapshots()
    rows = source_rows(snapshots, book, NOW, STALE_AFTER_MS)
    assert [row.name for row in listed_sources(rows, 10)] == ["batch", "quiet", "web-2@k3x9", "web-1"]
    assert [row.name for row in listed_sources(rows, 2)] == ["batch", "quiet"]
    assert listed_sources(rows, 0) == []
    # A source missing from the ledger (heard_ms None) ranks as the longest unheard of its kind.
    lost = SourceRow("lost", 1, 1, BAND, NOW, None, False, 0, 200)
    assert [row.name for row in listed_sources([*rows, lost], 10)][-2:] == ["lost", "web-1"]
    ties = [SourceRow(name, 1, 1, BAND, NOW, NOW - 5, False, 0, 200) for name in ("c", "a", "b")]
    assert [row.name for row in listed_sources(ties, 3)] == ["a", "b", "c"]


def test_the_heap_pick_is_the_head_of_the_full_sort() -> None:
    rng = random.Random(5)
    rows = [
        SourceRow(f"s{i}", i, 1, BAND, NOW, rng.choice([None, NOW - rng.randrange(0, 100_000)]), rng.random() < 0.3,
                  0, 200)
        for i in range(500)
    ]  # fmt: skip
    full = listed_sources(rows, len(rows))
    assert [row.stale for row in full] == sorted((row.stale for row in rows), reverse=True)
    for limit in (1, 7, 100, 499):
        assert listed_sources(rows, limit) == full[:limit]


def test_body_ages_from_the_snapshot_and_from_the_ledger_never_negative() -> None:
    ahead = SourceRow("ahead", 9, 4, BAND, NOW + 3_000, NOW - 2_500, False, 1, 256)
    assert source_body(ahead, NOW) == {
        "name": "ahead", "n": 9, "seq": 4, "median": {"value": 1.0, "lower": 0.5, "upper": 1.5},
        "last_snapshot_age_s": 0.0, "heard_age_s": 2.5, "status": "live", "rejected": 1, "k": 256,
    }  # fmt: skip
    empty = _snapshot("idle", 1, np.array([]), NOW - 4_000)
    body = source_body(SourceRow.of_snapshot(empty, None, True), NOW)
    assert body["median"] == {"value": None, "lower": None, "upper": None}
    assert (body["n"], body["last_snapshot_age_s"], body["heard_age_s"], body["status"]) == (0, 4.0, None, "stale")


def test_answer_summarises_every_row_and_lists_up_to_limit() -> None:
    book, snapshots = _book_and_snapshots()
    rows = source_rows(snapshots, book, NOW, STALE_AFTER_MS)
    answer = sources_answer(rows, 2, now_ms=NOW, pending=book.pending())
    assert answer["complete"] is True
    # Three with a snapshot (the heartbeat-only one has no numbers), three stale, web-1's 40 pending.
    assert answer["summary"] == {"count": 3, "stale": 3, "n_total": 1510, "pending": 40}
    assert [row["name"] for row in answer["rows"]] == ["batch", "quiet"]
    assert sources_answer(rows, 0, now_ms=NOW, pending=0)["rows"] == []
    assert sources_answer([], 100, now_ms=NOW, pending=0) == {
        "complete": True, "summary": {"count": 0, "stale": 0, "n_total": 0, "pending": 0}, "rows": [],
    }  # fmt: skip
    assert sources_unknown() == {"complete": False, "summary": None, "rows": []}
