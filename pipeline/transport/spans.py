"""Where a batch-delivered partition's commit point moves as its batches are acked.

A batch message has the offset L of its last record, and Faust acks L only. Left
alone, Faust's drain would record the batch's other offsets as a "gap" that
includes L (commits then stall on the duplicate) and expand every gap into a list
of offsets at commit time. Instead, for a batch-delivered partition:

* handing a batch to Faust sets Faust's read offset to L (no gap, nothing for the
  drain to drop) and records the batch's *span* ``L -> S``, S being where it was
  expected to start (the previous batch's L + 1, or the offset of the last seek),
  so offsets a fetch skips (transaction markers, compaction) join the next span;
* :func:`advance_commit` walks the acked L's in order and moves the commit point to
  L + 1 while the batch's span starts at or before it: one step per batch, no offset
  lists. An acked batch after an unacked one waits, as in Faust.
"""

from __future__ import annotations

import logging

__all__ = ["advance_commit"]

logger = logging.getLogger(__name__)


def advance_commit(acked: list[int], spans: dict[int, int], committed: int | None) -> tuple[int | None, list[int]]:
    """The new commit point of one partition, and the acked last offsets it passed (None, []: it stays).

    ``acked``: last offsets of acked batches (sorted here; the passed ones are removed).
    ``spans``: last offset -> where that batch started (spans behind the new point are removed,
    also those a seek superseded). ``committed``: the partition's commit point (None: nothing
    committed yet, or offset 0, which Faust stores as None; then the earliest batch still
    tracked is where the partition started).
    """
    if not acked:
        return None, []
    acked.sort()
    cursor = committed if committed is not None else min(spans.values(), default=acked[0])
    done = 0
    for last in acked:
        if spans.get(last, last) > cursor:
            break  # an earlier batch is not acked yet
        cursor = max(cursor, last + 1)
        done += 1
    if not done:
        return None, []
    finished = acked[:done]
    del acked[:done]
    for last in [last for last in spans if last < cursor]:
        del spans[last]
    return cursor, finished
