"""The topics DistributedMedian uses, declared once.

``numbers`` is the input: each partition is a shard. The shard state table's
changelog is declared here too (see below). ``sketches`` is compacted and keyed
by shard id, so it always holds the latest snapshot of every shard: it is the
aggregator's changelog, and rebuilds the aggregator on its own. ``medians`` has one partition so that
estimates are totally ordered. ``dead-letters`` keeps rejected input with its
reason. Partition counts of ``sketches`` and ``medians`` are fixed at 1: one
aggregator reads every snapshot, and snapshots are few and small.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from config import Settings

__all__ = ["SHARD_TABLE", "TopicSet", "TopicSpec", "changelog_topic", "topic_set"]

logger = logging.getLogger(__name__)

_DAY_MS = 24 * 3600 * 1000

# Small index files for the topics with a partition per shard. Kafka preallocates each
# segment's offset and time index at `segment.index.bytes` (10 MiB by default) as a sparse
# file and maps it into memory; the first touch of a mapped page makes the kernel read
# around it (up to the disk's `read_ahead_kb`) and zero the holes it read. With 8 MiB of
# read-ahead, a takeover at 8,192 shards touched tens of thousands of index files and the
# broker spent 81% of its CPU zeroing pages (`perf`, DESIGN.md section 7a). 128 KiB files
# bound that to 128 KiB a file. One index entry per 64 KiB of log keeps a segment's
# entries under the smaller index up to about 700 MiB of log (the time index's 10,922
# entries), and a lookup scans at most 64 KiB of batch headers.
_SMALL_INDEX = MappingProxyType({"segment.index.bytes": str(128 * 1024), "index.interval.bytes": str(64 * 1024)})

SHARD_TABLE = "shard-sketches"
"""The Faust table holding each shard's state (co-partitioned with the input topic)."""


def changelog_topic(app_id: str, table: str) -> str:
    """The name Faust gives a table's changelog topic."""
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, partitions, replication and the configs we insist on."""

    name: str
    """Topic name."""
    partitions: int
    """Partition count."""
    replication_factor: int
    """Replicas per partition."""
    config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Topic configs that must hold; other configs are left to the cluster's defaults."""
    purpose: str = ""
    """What the topic is for (shown by ``dmedian topics describe``)."""
    tuning: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Topic configs set at creation for speed. A topic without them still works: ``topics describe``
    notes the difference, and ``create`` does not refuse the topic for it."""

    @property
    def creation_config(self) -> dict[str, str]:
        """The configs a new topic is created with."""
        return {**self.tuning, **self.config}


@dataclass(frozen=True)
class TopicSet:
    """The four topics of one deployment."""

    numbers: TopicSpec
    """Input numbers; partition p is shard p."""
    sketches: TopicSpec
    """Compacted latest snapshot per shard."""
    medians: TopicSpec
    """The global estimate over time."""
    dead_letters: TopicSpec
    """Rejected input with its reason."""
    shard_changelog: TopicSpec
    """Changelog of the shard state table: partition p holds shard p."""

    def __iter__(self) -> Iterator[TopicSpec]:
        return iter((self.numbers, self.sketches, self.medians, self.dead_letters, self.shard_changelog))


def topic_set(settings: Settings) -> TopicSet:
    """The topic specs for ``settings``."""
    replicas = settings.replication_factor
    return TopicSet(
        numbers=TopicSpec(
            settings.topic_numbers,
            settings.numbers_partitions,
            replicas,
            MappingProxyType({"cleanup.policy": "delete", "retention.ms": str(settings.numbers_retention_ms)}),
            "input numbers; partition p is shard p",
            _SMALL_INDEX,
        ),
        sketches=TopicSpec(
            settings.topic_sketches,
            1,
            replicas,
            MappingProxyType(
                {
                    "cleanup.policy": "compact",
                    # Compact often: only the latest snapshot per shard matters, and a
                    # new aggregator reads the whole topic (at most ~10 minutes of
                    # snapshots beyond the latest per shard) before its first record.
                    "min.cleanable.dirty.ratio": "0.1",
                    "segment.ms": str(600 * 1000),
                    "delete.retention.ms": str(_DAY_MS),
                }
            ),
            "latest sketch snapshot per shard (key = shard id)",
        ),
        medians=TopicSpec(
            settings.topic_medians,
            1,
            replicas,
            MappingProxyType({"cleanup.policy": "delete", "retention.ms": str(7 * _DAY_MS)}),
            "global median and quantiles over time (key = global)",
        ),
        dead_letters=TopicSpec(
            settings.topic_dead_letters,
            1,
            replicas,
            MappingProxyType({"cleanup.policy": "delete", "retention.ms": str(30 * _DAY_MS)}),
            "rejected input with source position and reason",
        ),
        # Faust would create the changelogs itself at start-up, racing its own
        # metadata (a changelog seen with 0 partitions crashes the agent until the
        # next metadata refresh). Declaring them here creates them ahead of time,
        # and lets a partition change grow them together with their source.
        shard_changelog=TopicSpec(
            changelog_topic(settings.app_id, SHARD_TABLE),
            settings.numbers_partitions,
            replicas,
            MappingProxyType({"cleanup.policy": "compact"}),
            "state of each shard: KLL sketch, last source offset (partition p = shard p)",
            _SMALL_INDEX,
        ),
    )
