"""The dead-letter message: a rejected input record, with its reason and its original bytes.

Bad input never crashes a worker and never vanishes: the shard agents and the
aggregator send each rejected record (or the rejected elements of a batch) to the
``dead-letters`` topic as this JSON message, and count it by reason.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

import orjson

__all__ = ["DEAD_LETTER_VERSION", "DeadLetter"]

logger = logging.getLogger(__name__)

DEAD_LETTER_VERSION = 1


@dataclass(frozen=True)
class DeadLetter:
    """A rejected input record, sent to ``dead-letters`` with its reason."""

    reason: str
    """Why it was rejected (a :class:`~pipeline.core.codec.Reason` or snapshot error reason)."""
    detail: str
    """What exactly was wrong."""
    topic: str
    """Source topic."""
    partition: int
    """Source partition."""
    offset: int
    """Source offset."""
    value: bytes | None
    """The original message value, untouched."""
    bad_elements: tuple[tuple[int, str], ...] = ()
    """For a partially rejected batch: (element index, reason) of each dropped element."""

    def to_json(self) -> bytes:
        """JSON with the original bytes in base64, readable with any consumer."""
        body = {
            "v": DEAD_LETTER_VERSION,
            "reason": self.reason,
            "detail": self.detail,
            "source": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "value_b64": None if self.value is None else base64.b64encode(self.value).decode("ascii"),
            "bad_elements": [{"index": i, "reason": r} for i, r in self.bad_elements],
        }
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, data: bytes) -> DeadLetter:
        """Parse a dead letter (for tools and tests)."""
        body = orjson.loads(data)
        if body.get("v") != DEAD_LETTER_VERSION:
            raise ValueError(f"unsupported dead letter version {body.get('v')!r}")
        source = body["source"]
        raw = body["value_b64"]
        return cls(
            body["reason"],
            body["detail"],
            source["topic"],
            int(source["partition"]),
            int(source["offset"]),
            None if raw is None else base64.b64decode(raw),
            tuple((int(e["index"]), str(e["reason"])) for e in body["bad_elements"]),
        )
