"""Growing the input topic and its co-partitioned changelog together.

Faust refuses a source topic and a table changelog with different partition
counts, and Kafka can only add partitions. ``grow_partitions`` grows the shard
state changelog first and the input topic second, so a worker never sees more
shards than changelog partitions; a grow that stopped halfway is finished by
running it again. Existing partitions (and the shards' state) are untouched;
the new partitions start as empty shards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, NewPartitions  # type: ignore[attr-defined]

from config import Settings
from topics.specs import TopicSet

__all__ = ["GrowthError", "GrowthPlan", "adopt_cluster_partitions", "cluster_partitions", "grow_partitions"]

logger = logging.getLogger(__name__)

_TIMEOUT_S = 30.0


class GrowthError(RuntimeError):
    """The topics cannot be grown as asked (names the setting or topic at fault)."""


@dataclass(frozen=True)
class GrowthPlan:
    """What a grow did (or would do): each topic's partitions before and after."""

    before: dict[str, int]
    """Partition count per topic before the grow."""
    after: int
    """Partition count of every grown topic afterwards."""

    @property
    def grown(self) -> list[str]:
        """The topics that got new partitions."""
        return [name for name, count in self.before.items() if count < self.after]


def cluster_partitions(admin: AdminClient, topic: str) -> int | None:
    """How many partitions ``topic`` has on the cluster (None if it does not exist)."""
    # All topics' metadata, not this one's: asking a broker for one missing topic
    # auto-creates it (with one partition) where auto.create.topics.enable is on.
    metadata = admin.list_topics(timeout=_TIMEOUT_S).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return None
    return len(metadata.partitions)


def grow_partitions(admin: AdminClient, topics: TopicSet, partitions: int) -> GrowthPlan:
    """Grow the shard changelog, then the input topic, to ``partitions``."""
    ordered = [topics.shard_changelog.name, topics.numbers.name]  # changelog first: see the module doc
    before: dict[str, int] = {}
    for name in ordered:
        count = cluster_partitions(admin, name)
        if count is None:
            raise GrowthError(f"topic {name!r} does not exist: run `dmedian topics create` (or start a worker) first")
        if count > partitions:
            raise GrowthError(f"topic {name!r} already has {count} partitions; Kafka cannot remove partitions")
        before[name] = count
    plan = GrowthPlan(before, partitions)
    for name in plan.grown:
        future = admin.create_partitions([NewPartitions(name, partitions)], request_timeout=_TIMEOUT_S)[name]
        future.result(timeout=_TIMEOUT_S)
        logger.info("grew %s from %d to %d partitions", name, before[name], partitions)
    return plan


def adopt_cluster_partitions(settings: Settings, admin: AdminClient) -> Settings:
    """Settings whose ``numbers_partitions`` is the cluster's, after a grow.

    The grown topics are the truth: every worker adopts their count without a
    config change on every host. A cluster with fewer partitions than configured
    is a configuration error (Kafka cannot shrink; growing is an explicit act).
    """
    found = cluster_partitions(admin, settings.topic_numbers)
    if found is None or found == settings.numbers_partitions:
        return settings
    if found < settings.numbers_partitions:
        raise GrowthError(
            f"numbers_partitions (DMEDIAN_NUMBERS_PARTITIONS) is {settings.numbers_partitions} but topic "
            f"{settings.topic_numbers!r} has {found} partitions: set it to {found}, or run "
            f"`dmedian topics grow --partitions {settings.numbers_partitions}`"
        )
    logger.warning(
        "topic %s has %d partitions, numbers_partitions says %d: using %d (it was grown; update the setting)",
        settings.topic_numbers,
        found,
        settings.numbers_partitions,
        found,
    )
    return settings.model_copy(update={"numbers_partitions": found})
