"""Seeking every assigned partition to its committed offset in one request.

aiokafka's ``seek_to_committed`` asks the group coordinator for one partition at a
time: a round trip per partition. After a rebalance Faust seeks every assigned
partition (input and changelogs), so with thousands of shards a worker spent tens
of seconds there before it was ready (22 s of a 28 s takeover at 2,048 partitions,
``scripts/bench_many_shards.py --kill``). The coordinator answers for any number
of partitions in one OffsetFetch request, so we ask once.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.structs import TopicPartition

__all__ = ["seek_all_to_committed"]

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
