"""One contract for every reader of ``sketches``: the agent and the rebuild refuse the same forged key."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from pipeline.core.sketch import ShardState
from pipeline.core.wire import SketchSnapshot
from pipeline.kafka.clients import producer
from pipeline.kafka.follow import wait_for_record
from pipeline.kafka.produce import produce_values
from pipeline.kafka.sketches_log import read_sketches_log
from tests.integration.harness import Deployment

pytestmark = pytest.mark.integration


def _snapshot(shard: int, last_offset: int, loc: float) -> SketchSnapshot:
    state = ShardState.empty(shard, 200)
    state.apply(np.random.default_rng(shard).normal(loc, 1.0, 400 + shard), last_offset)
    return SketchSnapshot.from_state(state, ts=1_700_000_000_000)


def test_a_snapshot_under_another_shards_key_is_refused_by_the_agent_and_by_the_rebuild(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(2)
    settings = deployment.settings
    genuine = [_snapshot(0, 10, 0.0), _snapshot(1, 10, 0.0)]
    # Self-consistent and plausible, of shard 0 further on: merged, it would replace shard 0's numbers.
    forged = _snapshot(0, 1_000, 50.0)
    records = [(b"0", genuine[0].to_bytes()), (b"1", genuine[1].to_bytes()), (b"1", forged.to_bytes())]
    produce_values(producer(settings), settings.topic_sketches, [v for _, v in records],
                   key=lambda i: records[i - 1][0])  # fmt: skip

    # The rebuild (what a worker taking the aggregator over reads first).
    log = read_sketches_log(settings)
    assert log.snapshots == {0: genuine[0], 1: genuine[1]}
    assert (log.records_read, log.unreadable) == (3, 1)

    # The agent, reading the same records as they arrive: the same verdict, dead-lettered.
    deployment.worker()
    total = genuine[0].n + genuine[1].n
    record = wait_for_record(settings, lambda r: r.n >= total, 90)
    assert record is not None, deployment.worker_logs()
    assert (record.n, record.shards) == (total, 2)
    letters = deployment.dead_letters()
    assert [(d.reason, d.offset, d.value) for d in letters] == [("snapshot_key_mismatch", 2, forged.to_bytes())]
