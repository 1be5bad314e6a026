"""Sending rejected input to the dead-letter topic and counting it per reason."""

from __future__ import annotations

import logging
from collections import Counter

from faust.types import TopicT

from pipeline.core.dead_letter import DeadLetter

__all__ = ["DeadLetterSink"]

logger = logging.getLogger(__name__)


class DeadLetterSink:
    """Sends :class:`DeadLetter` records and keeps a per-reason counter for this worker."""

    def __init__(self, topic: TopicT) -> None:
        self._topic = topic
        self.counts: Counter[str] = Counter()
        """Rejections seen by this worker since it started, per reason."""

    async def send(self, letter: DeadLetter, key: bytes | None, count: dict[str, int] | None = None) -> None:
        """Send one dead letter; ``count`` is the counter increment (default: 1 for its reason)."""
        self.counts.update(count or {letter.reason: 1})
        logger.debug(
            "dead letter from %s[%d]@%d: %s (%s)",
            letter.topic,
            letter.partition,
            letter.offset,
            letter.reason,
            letter.detail,
        )
        await self._topic.send(key=key, value=letter.to_json())
