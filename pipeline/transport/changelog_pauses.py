"""Faust's pauses of changelog partitions, made real in aiokafka.

Faust pauses a partition in its own bookkeeping only: aiokafka goes on fetching every
assigned partition, and Faust just does not ask for the records. For a worker's
changelog partitions that means fetching back, and parsing in Python, every state
write the worker itself made (and, at thousands of shards, scanning and fetching
thousands of partitions per fetch). Faust resumes the changelog partitions it reads
(recovery, standbys) and pauses the rest; :func:`mirror_changelog_pauses` repeats
each of those calls in aiokafka, on the consumer's own thread and event loop (a
pause creates an asyncio future that the fetcher awaits there), in the order Faust
made them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition
from faust.types.tuples import TP

__all__ = ["mirror_changelog_pauses"]

logger = logging.getLogger(__name__)


def mirror_changelog_pauses(
    thread: Any, changelog_topics: Iterable[str], tps: Iterable[TP], running: set[asyncio.Future[Any]], *, pause: bool
) -> None:
    """Pause (or resume) in aiokafka the changelog partitions among ``tps``, on ``thread`` (a Faust consumer thread).

    ``running`` is the caller's set of calls under way: it holds a reference to each until
    it has run (the event loop keeps only weak ones).
    """
    topics = set(changelog_topics)
    mine = [TopicPartition(tp.topic, tp.partition) for tp in tps if tp.topic in topics]
    if not mine:
        return
    task = asyncio.ensure_future(thread.call_thread(_set_paused, thread, mine, pause))
    running.add(task)
    task.add_done_callback(lambda done: _finished(done, running))


def _finished(task: asyncio.Future[Any], running: set[asyncio.Future[Any]]) -> None:
    running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("changelog pause mirror failed: %r", task.exception())


async def _set_paused(thread: Any, tps: list[TopicPartition], pause: bool) -> None:
    # On the consumer's thread. Only partitions still assigned: a rebalance may have taken some.
    consumer = thread._ensure_consumer()
    assigned = consumer.assignment()
    current = [tp for tp in tps if tp in assigned]
    if current:
        (consumer.pause if pause else consumer.resume)(*current)
