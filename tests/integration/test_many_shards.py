"""Many shards on a real broker: 512 partitions, two workers, a kill -9 and a restart.

Every partition gets numbers before the kill, while the survivor owns every shard, and
after the victim is back on its data dir; every number is counted exactly once and
every shard is in the record.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from pipeline.core.exact import check_rank
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from tests.integration.harness import Deployment, WorkerProcess

pytestmark = pytest.mark.integration

PARTITIONS = 512
NUMBERS_PER_WAVE = 51_200  # JSON arrays of 100: one message per partition per wave


def _wait_owning(worker: WorkerProcess, timeout_s: float = 120.0) -> None:
    # shards_owned counts owned shards whether or not their state is loaded yet (none is, before data).
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = worker.try_stats()
        if stats and stats["shards_owned"]:
            return
        time.sleep(0.5)
    raise AssertionError(f"{worker.name} owned no shard within {timeout_s} s\n{worker.log_tail()}")


def test_512_shards_two_workers_a_kill_and_a_restart_count_every_number_once(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(PARTITIONS)
    waves = [generate(Distribution.LOGNORMAL, NUMBERS_PER_WAVE, seed=90 + i) for i in range(3)]

    def spread(values: np.ndarray) -> None:
        # Message i goes to partition i mod 512: every shard gets numbers in every wave.
        deployment.produce(values, MessageFormat.JSON_ARRAY, 100, partition=lambda seq: (seq - 1) % PARTITIONS)

    steady, victim = deployment.worker("steady"), deployment.worker("victim")
    _wait_owning(steady)
    _wait_owning(victim)
    spread(waves[0])
    deployment.wait_for_n(NUMBERS_PER_WAVE, timeout_s=300)

    victim.kill()  # SIGKILL: no flush, no commit
    spread(waves[1])
    record = deployment.wait_for_n(2 * NUMBERS_PER_WAVE, timeout_s=300)
    assert steady.alive, steady.log_tail()

    victim = deployment.worker("victim", data_dir=victim.data_dir)  # back on its RocksDB and changelogs
    _wait_owning(victim)
    spread(waves[2])
    record = deployment.wait_for_n(3 * NUMBERS_PER_WAVE, timeout_s=300)
    assert record.shards == PARTITIONS

    ordered = np.sort(np.concatenate(waves))
    check = check_rank(ordered, 0.5, record.median.value)
    assert check.within(record.rank_bound), f"median {record.median.value}: {check}, bound {record.rank_bound}"
    assert {shard for shard, snapshot in deployment.snapshots().items() if snapshot.n > 0} == set(range(PARTITIONS))
