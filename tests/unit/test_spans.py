"""The commit point of a batch-delivered partition moves one acked batch at a time, never past a gap."""

from __future__ import annotations

from pipeline.transport.spans import advance_commit


def test_acked_batches_in_order_move_the_commit_past_each() -> None:
    acked, spans = [19, 9], {9: 0, 19: 10, 29: 20}
    assert advance_commit(acked, spans, None) == (20, [9, 19])
    assert acked == []
    assert spans == {29: 20}


def test_an_acked_batch_after_an_unacked_one_waits() -> None:
    acked, spans = [29], {9: 0, 19: 10, 29: 20}
    assert advance_commit(acked, spans, 10) == (None, [])
    assert acked == [29]
    assert spans == {9: 0, 19: 10, 29: 20}
    acked.append(19)
    assert advance_commit(acked, spans, 10) == (30, [19, 29])


def test_offsets_a_fetch_skipped_join_the_next_span() -> None:
    # A transaction marker at 10: the next batch started at 11 but was expected at 10.
    acked, spans = [15], {15: 10}
    assert advance_commit(acked, spans, 10) == (16, [15])


def test_spans_a_seek_superseded_are_dropped_when_the_point_passes_them() -> None:
    acked, spans = [50], {7: 0, 50: 40}
    assert advance_commit(acked, spans, 40) == (51, [50])
    assert spans == {}


def test_nothing_acked_leaves_everything() -> None:
    acked: list[int] = []
    spans = {9: 0}
    assert advance_commit(acked, spans, None) == (None, [])
    assert spans == {9: 0}
