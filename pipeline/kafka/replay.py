"""Replays: rebuilding state from the input topic under a fresh app id.

A replay is an ordinary worker under its own app id (so its own consumer group
and state changelogs) writing to its own ``sketches``, ``medians`` and
``dead-letters`` topics, so the live pipeline's output is untouched until the
replay is told to take over. This module plans one and tells when it caught up.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from config import Settings
from pipeline.core.wire import SketchSnapshot
from pipeline.kafka.clients import consumer, require_topics, retrying, watermarks

__all__ = [
    "ReplayPlan",
    "caught_up",
    "commit_start",
    "new_replay_id",
    "plan_replay",
    "replay_settings",
    "replayed_records",
    "start_offsets_at",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayPlan:
    """Where a replay starts and what it must reach to have caught up."""

    app_id: str
    """The replay's app id (consumer group, changelog prefix, topic prefix)."""
    start: Mapping[int, int]
    """Per partition of the input topic: the first offset the replay reads."""
    end: Mapping[int, int]
    """Per partition: the input topic's end offset when the replay started."""

    @property
    def records(self) -> int:
        """Input records between start and end (what the replay must read to catch up)."""
        return sum(max(self.end[p] - self.start[p], 0) for p in self.end)


def replay_settings(settings: Settings, app_id: str, *, live_output: bool = False) -> dict[str, str]:
    """Setting overrides for a worker of the replay ``app_id``.

    Its own sketches and dead-letters topics always; its own medians topic unless
    ``live_output`` (taking over: it then publishes where users read).
    """
    return {
        "app_id": app_id,
        "topic_sketches": f"{app_id}-sketches",
        "topic_dead_letters": f"{app_id}-dead-letters",
        "topic_medians": settings.topic_medians if live_output else f"{app_id}-medians",
    }


def new_replay_id(settings: Settings) -> str:
    """A fresh app id for a replay of ``settings.app_id``."""
    return f"{settings.app_id}-replay-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:4]}"


def plan_replay(settings: Settings, app_id: str, from_ms: int | None) -> ReplayPlan:
    """Start offsets (the beginning, or the first record at or after ``from_ms``) and end offsets."""
    partitions = require_topics(settings, "numbers")[settings.topic_numbers]
    client = consumer(settings, f"{app_id}-planner")
    try:
        ends, starts = {}, {}
        for p in range(partitions):
            low, high = watermarks(client, TopicPartition(settings.topic_numbers, p), settings.kafka_timeout_s)
            ends[p], starts[p] = high, low
        if from_ms is not None:
            starts = start_offsets_at(client, settings.topic_numbers, from_ms, ends, settings.kafka_timeout_s)
    finally:
        client.close()
    return ReplayPlan(app_id, starts, ends)


def start_offsets_at(
    client: Consumer, topic: str, from_ms: int, ends: Mapping[int, int], timeout_s: float = 30.0
) -> dict[int, int]:
    """The first offset of each partition at or after ``from_ms`` (the end when there is none)."""
    asked = [TopicPartition(topic, p, from_ms) for p in ends]
    found = client.offsets_for_times(asked, timeout=timeout_s)
    # -1: no record at or after the time; the replay reads nothing there.
    return {tp.partition: tp.offset if tp.offset >= 0 else ends[tp.partition] for tp in found}


def commit_start(settings: Settings, plan: ReplayPlan) -> None:
    """Commit the plan's start offsets for the replay's group, where its worker will begin."""
    client = consumer(settings, plan.app_id)
    offsets = [TopicPartition(settings.topic_numbers, p, offset) for p, offset in plan.start.items()]
    try:
        # A new group's coordinator may still be loading (a fresh cluster, a moved one).
        retrying(lambda: client.commit(offsets=offsets, asynchronous=False), settings.kafka_timeout_s)
    finally:
        client.close()


def caught_up(plan: ReplayPlan, snapshots: Mapping[int, SketchSnapshot]) -> bool:
    """Whether the replay's snapshots cover every input record up to the plan's end."""
    for partition, end in plan.end.items():
        if end <= plan.start[partition]:
            continue  # nothing to read there
        snapshot = snapshots.get(partition)
        if snapshot is None or snapshot.last_offset < end - 1:
            return False
    return True


def replayed_records(plan: ReplayPlan, snapshots: Mapping[int, SketchSnapshot]) -> int:
    """Input records the replay's snapshots cover so far (for progress)."""
    done = 0
    for partition, end in plan.end.items():
        snapshot = snapshots.get(partition)
        if snapshot is not None:
            done += max(min(snapshot.last_offset + 1, end) - plan.start[partition], 0)
    return done
