"""The fault tests that matter for the fetcher, on the fetcher that is not the default.

The suite runs on the default ``fetcher``; each test here runs one of its fault tests
as it is, with every worker it starts set to fetch the batch-delivered topics with
the other one (the harness passes ``DMEDIAN_FETCHER`` through), and then checks in
each worker's log that it did. Those chosen are the ones where a fetcher can lose or repeat records: SIGKILL and a
restart from the stored state, a restart restoring each shard from its own changelog
partition, workers joining and leaving, repeated kills of one of two workers, a
broker restart, and partitions added while running. The whole suite runs on either
fetcher with ``DMEDIAN_FETCHER=aiokafka`` or ``librdkafka`` in the environment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config import load_settings
from pipeline.localbroker import LocalBroker
from tests.integration import test_faults, test_grow, test_pipeline, test_rebalance
from tests.integration.harness import Deployment
from tests.integration.test_faults import own_broker

pytestmark = pytest.mark.integration

__all__ = ["own_broker"]  # the broker restart test's fixture, used here as there

OTHER_FETCHER = "aiokafka" if load_settings(environ={}).fetcher == "librdkafka" else "librdkafka"
"""The fetcher these tests run on: the one the rest of the suite does not."""


@pytest.fixture(autouse=True)
def other_fetcher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Workers started by the test fetch with :data:`OTHER_FETCHER`; afterwards, each one's log says so."""
    monkeypatch.setenv("DMEDIAN_FETCHER", OTHER_FETCHER)
    yield
    # Worker logs only: deploy() puts each deployment in d<n>/, and RocksDB's own *.log files lie deeper.
    logs = sorted([*tmp_path.glob("*.log"), *tmp_path.glob("d*/*.log")])
    assert logs, "the test started no worker"
    for log in logs:
        text = log.read_text(errors="replace")
        assert f"batch topics are fetched with {OTHER_FETCHER}" in text, f"{log.name}: not with {OTHER_FETCHER}"


def test_sigkill_mid_stream_then_restart_counts_every_number_once(deploy: Callable[..., Deployment]) -> None:
    test_pipeline.test_sigkill_mid_stream_then_restart_counts_every_number_once(deploy, "batch")


def test_restart_restores_every_shard_from_its_own_changelog_partition(deploy: Callable[..., Deployment]) -> None:
    test_pipeline.test_restart_restores_every_shard_from_its_own_changelog_partition(deploy, "batch")


def test_workers_joining_and_leaving_mid_stream_keep_n_exact(deploy: Callable[..., Deployment]) -> None:
    test_rebalance.test_workers_joining_and_leaving_mid_stream_keep_n_exact(deploy)


def test_one_of_two_workers_killed_again_and_again_counts_every_number_once(
    deploy: Callable[..., Deployment],
) -> None:
    test_faults.test_one_of_two_workers_killed_again_and_again_counts_every_number_once(deploy)


def test_a_broker_restart_mid_stream_is_survived_with_n_exact(own_broker: LocalBroker, tmp_path: Path) -> None:
    test_faults.test_a_broker_restart_mid_stream_is_survived_with_n_exact(own_broker, tmp_path)


def test_grow_from_four_to_eight_partitions_keeps_old_shards_and_adds_new_ones(
    deploy: Callable[..., Deployment],
) -> None:
    test_grow.test_grow_from_four_to_eight_partitions_keeps_old_shards_and_adds_new_ones(deploy)
