"""Growing the input topic and its co-partitioned changelog together.

Faust refuses a source topic and a table changelog with different partition
counts, and Kafka can only add partitions. ``grow_partitions`` grows the shard
state changelog first and the input topic second, so a worker never sees more
shards than changelog partitions; a grow that stopped halfway is finished by
running it again. Existing partitions (and the shards' state) are untouched;
the new partitions start as empty shards. Each topic grows in steps of at most
``partitions_per_request`` (a broker caps one request at 10,000 partitions).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka.admin import AdminClient

from config import Settings
from pipeline.errors import SettingsError, TopicMissingError
from topics.admin import AdminOptions, grow_in_steps, partition_counts
from topics.specs import TopicSet

__all__ = [
    "GrowthError",
    "GrowthPlan",
    "adopt_cluster_partitions",
    "cluster_partitions",
    "fewer_partitions_message",
    "grow_partitions",
]

logger = logging.getLogger(__name__)


class GrowthError(SettingsError):
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


def cluster_partitions(admin: AdminClient, topic: str, timeout_s: float = 30.0) -> int | None:
    """How many partitions ``topic`` has on the cluster (None if it does not exist)."""
    return partition_counts(admin, timeout_s).get(topic)


def grow_partitions(
    admin: AdminClient, topics: TopicSet, partitions: int, options: AdminOptions = AdminOptions()
) -> GrowthPlan:
    """Grow the shard changelog, then the input topic, to ``partitions``."""
    ordered = [topics.shard_changelog.name, topics.numbers.name]  # changelog first: see the module doc
    counts = partition_counts(admin, options.timeout_s)
    before: dict[str, int] = {}
    for name in ordered:
        count = counts.get(name)
        if count is None:
            raise TopicMissingError(
                f"topic {name!r} does not exist: run `dmedian topics create` (or start a worker) first"
            )
        if count > partitions:
            raise GrowthError(f"topic {name!r} already has {count} partitions; Kafka cannot remove partitions")
        before[name] = count
    plan = GrowthPlan(before, partitions)
    for name in plan.grown:
        grow_in_steps(admin, name, partitions, options)
        logger.info("grew %s from %d to %d partitions", name, before[name], partitions)
    return plan


def fewer_partitions_message(settings: Settings, topic: str, found: int) -> str:
    """Why a shard topic with fewer partitions than ``numbers_partitions`` is refused, and the two fixes."""
    return (
        f"numbers_partitions (DMEDIAN_NUMBERS_PARTITIONS) is {settings.numbers_partitions} but topic "
        f"{topic!r} has {found} partitions: set it to {found}, or run "
        f"`dmedian topics grow --partitions {settings.numbers_partitions}`"
    )


def adopt_cluster_partitions(settings: Settings, admin: AdminClient) -> Settings:
    """Settings whose ``numbers_partitions`` is the cluster's, after a grow.

    The grown topics are the truth: every worker adopts their count without a
    config change on every host. A cluster with fewer partitions than configured
    is a configuration error (Kafka cannot shrink; growing is an explicit act).
    """
    found = cluster_partitions(admin, settings.topic_numbers, settings.kafka_timeout_s)
    if found is None or found == settings.numbers_partitions:
        return settings
    if found < settings.numbers_partitions:
        raise GrowthError(fewer_partitions_message(settings, settings.topic_numbers, found))
    logger.warning(
        "topic %s has %d partitions, numbers_partitions says %d: using %d (it was grown; update the setting)",
        settings.topic_numbers,
        found,
        settings.numbers_partitions,
        found,
    )
    return settings.model_copy(update={"numbers_partitions": found})
