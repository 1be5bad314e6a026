"""Committed offsets at thousands of partitions: one request, one pass.

Two of the consumer thread's per-rebalance and per-commit paths cost a round trip
or a set build per partition, which a worker with thousands of shards cannot pay:

* aiokafka's ``seek_to_committed`` asks the group coordinator for one partition at
  a time. After a rebalance Faust seeks every assigned partition (input and
  changelogs): 22 s of a 28 s takeover at 2,048 partitions
  (``scripts/bench_many_shards.py --kill``). The coordinator answers for any number
  of partitions in one OffsetFetch request, so :func:`seek_all_to_committed` asks once.
* Faust's ``AIOKafkaConsumerThread._commit`` keeps only the assigned partitions'
  offsets by calling ``assignment()`` once per offset, and each call builds a set of
  every assigned partition: O(partitions²) per commit, a third of a worker's CPU at
  8,192 partitions (py-spy), with flush ticks stalled for up to 25 s.
  :func:`commit_assigned` is the same commit with the set built once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from time import monotonic
from typing import Any

from aiokafka.errors import CommitFailedError
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from faust.types.tuples import TP

__all__ = ["commit_assigned", "seek_all_to_committed"]

logger = logging.getLogger(__name__)


async def seek_all_to_committed(consumer: Any) -> dict[TopicPartition, int | None]:
    """Seek every partition assigned to an aiokafka ``consumer`` to its committed offset.

    Behaves as ``AIOKafkaConsumer.seek_to_committed()`` with no arguments: returns
    each assigned partition's committed offset (None where nothing was committed)
    and moves only partitions with a committed offset above 0.
    """
    partitions = consumer._subscription.assigned_partitions()
    if not partitions:
        return {}
    answers = await consumer._coordinator.fetch_committed_offsets(partitions)
    committed: dict[TopicPartition, int | None] = {}
    for tp in partitions:
        found = answers.get(tp)
        offset = None if found is None or found.offset == -1 else int(found.offset)
        committed[tp] = offset
        if offset and offset > 0:
            consumer._fetcher.seek_to(tp, offset)
    logger.debug("sought %d partitions to their committed offsets in one request", len(partitions))
    return committed


async def commit_assigned(thread: Any, offsets: Mapping[TP, int]) -> bool:
    """Faust's ``AIOKafkaConsumerThread._commit``, with the assignment read once per commit.

    Commits the offsets of the partitions still assigned; returns False when the
    group already rebalanced, and crashes the thread on any other failure, as Faust does.
    """
    consumer = thread._ensure_consumer()
    assigned = thread.assignment()
    now = monotonic()
    commitable = {tp: offset for tp, offset in offsets.items() if tp in assigned}
    try:
        thread.tp_last_committed_at.update(dict.fromkeys(commitable, now))
        await consumer.commit(
            {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "") for tp, offset in commitable.items()}
        )
    except CommitFailedError as exc:
        if "already rebalanced" in str(exc):
            return False
        thread.log.exception("Committing raised exception: %r", exc)
        await thread.crash(exc)
        return False
    except Exception as exc:  # IllegalStateError and the rest, as Faust handles them
        thread.log.exception("Got exception: %r\nCurrent assignment: %r", exc, assigned)
        await thread.crash(exc)
        return False
    return True
