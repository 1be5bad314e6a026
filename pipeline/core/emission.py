"""When a shard sends a snapshot, and when the aggregator publishes.

The rule sits behind :class:`EmissionRule` so that it can be replaced (a later
rule spends an error budget instead of a timer) without touching the agents.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

__all__ = ["EmissionRule", "EmissionState", "IntervalRule"]

logger = logging.getLogger(__name__)


@dataclass
class EmissionState:
    """What a rule needs to know about one shard (or the aggregator's output)."""

    last_emit_ms: int = 0
    """When the last snapshot or record was sent (0: never)."""
    emitted_version: int = -1
    """The state version (e.g. last source offset) it reflected."""
    version: int = -1
    """The current state version."""

    @property
    def changed(self) -> bool:
        """Whether there is something not yet sent."""
        return self.version != self.emitted_version

    def mark_emitted(self, now_ms: int) -> None:
        """Record that the current version was just sent."""
        self.last_emit_ms = now_ms
        self.emitted_version = self.version


class EmissionRule(Protocol):
    """Decides whether to send now."""

    def should_emit(self, state: EmissionState, now_ms: int) -> bool:
        """Whether to send the current state at ``now_ms``."""
        ...  # pragma: no cover


@dataclass(frozen=True)
class IntervalRule:
    """Send at most every ``interval_ms``, and only when something changed.

    Communication is bounded by one message per interval per shard, whatever the
    input rate; a change is sent within one interval (plus the flush timer's tick).
    """

    interval_ms: int
    """Minimum time between two sends."""

    def should_emit(self, state: EmissionState, now_ms: int) -> bool:
        """See :class:`EmissionRule`."""
        return state.changed and now_ms - state.last_emit_ms >= self.interval_ms
