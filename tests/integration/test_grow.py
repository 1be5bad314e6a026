"""Growing the input topic from 4 to 8 partitions: old shards keep their state, new ones appear."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from config import load_settings
from pipeline.core.exact import check_rank
from pipeline.kafka.clients import admin_client
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from tests.broker_fixture import BrokerHandle
from tests.integration.harness import Deployment
from topics import topic_set
from topics.growth import cluster_partitions

pytestmark = pytest.mark.integration


def _round_robin(partitions: int) -> Callable[[int], int]:
    return lambda sequence: (sequence - 1) % partitions


def test_grow_from_four_to_eight_partitions_keeps_old_shards_and_adds_new_ones(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(4)
    before, after = generate(Distribution.NORMAL, 200_000, seed=71), generate(Distribution.UNIFORM, 200_000, seed=72)
    worker = deployment.worker("worker")
    # Blocks of 1,000 sent round robin: shard p gets exactly every 4th (then 8th) block.
    deployment.produce(before, MessageFormat.FLOAT64, 1000, partition=_round_robin(4))
    deployment.wait_for_n(before.size)
    assert worker.stop() == 0

    grown = deployment.cli("topics", "grow", "--partitions", "8")
    assert grown.returncode == 0, grown.stderr + grown.stdout
    admin = admin_client(deployment.settings)
    topics = topic_set(deployment.settings)
    assert cluster_partitions(admin, topics.numbers.name) == 8
    assert cluster_partitions(admin, topics.shard_changelog.name) == 8
    again = deployment.cli("topics", "grow", "--partitions", "8")
    assert again.returncode == 0, again.stderr + again.stdout
    assert "(already)" in again.stderr + again.stdout
    shrink = deployment.cli("topics", "grow", "--partitions", "2")
    assert shrink.returncode != 0
    assert "cannot remove partitions" in shrink.stderr + shrink.stdout

    # The same settings (numbers_partitions still 4): the worker adopts the cluster's 8.
    deployment.worker("restarted", data_dir=worker.data_dir)
    deployment.produce(after, MessageFormat.FLOAT64, 1000, partition=_round_robin(8))
    record = deployment.wait_for_n(before.size + after.size)
    assert record.shards == 8

    snapshots = deployment.snapshots()
    assert sorted(snapshots) == list(range(8))
    for shard in range(8):
        expected = (50_000 if shard < 4 else 0) + 25_000
        assert snapshots[shard].n == expected, f"shard {shard}: n={snapshots[shard].n}, expected {expected}"
    ordered = np.sort(np.concatenate([before, after]))
    check = check_rank(ordered, 0.5, record.median.value)
    assert check.within(record.rank_bound), f"{check}, bound {record.rank_bound}"


def test_asking_for_a_missing_topics_partitions_does_not_create_it(kafka: BrokerHandle) -> None:
    # A worker's first start asks before the topics exist; a metadata request for one
    # topic would auto-create it with one partition, and then the real spec conflicts.
    name = f"missing-{uuid.uuid4().hex[:8]}"
    admin = admin_client(load_settings(environ={"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap}))
    assert cluster_partitions(admin, name) is None
    time.sleep(1.0)
    assert name not in admin.list_topics(timeout=10).topics
