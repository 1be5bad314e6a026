"""Rebalances mid-stream on the batch path: workers join and leave, and ``n`` stays exact."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from pipeline.core.exact import check_rank
from pipeline.kafka.follow import wait_for_record
from pipeline.kafka.generate import Distribution, generate
from tests.integration.background import BackgroundStream
from tests.integration.harness import Deployment

pytestmark = pytest.mark.integration


def test_workers_joining_and_leaving_mid_stream_keep_n_exact(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(8)
    values = generate(Distribution.LOGNORMAL, 600_000, seed=21)
    first = deployment.worker("first")
    stream = BackgroundStream(deployment, values, chunks=60, pause_s=0.25).start()
    assert wait_for_record(deployment.settings, lambda r: r.n > 0, 120) is not None, deployment.worker_logs()

    # A second worker joins: the group rebalances and half the shards move to it.
    second = deployment.worker("second")
    owned = second.wait_until_owning()
    assert stream.running, "the stream ended before the join; the test proves nothing"
    assert len(owned) < 8

    # The first leaves (a graceful stop): its shards move again, restored from changelogs.
    assert first.stop() == 0
    assert stream.running, "the stream ended before the leave; the test proves nothing"

    stream.join(180)
    record = deployment.wait_for_n(values.size, timeout_s=180)
    ordered = np.sort(values)
    for q, served in [(0.5, record.median.value)] + [(e.q, e.band.value) for e in record.quantiles]:
        check = check_rank(ordered, q, served)
        assert check.within(record.rank_error), f"q={q}: served {served}, {check}, bound {record.rank_error}"
    assert record.shards == 8
    assert sorted(second.stats()["shards"]) == [str(p) for p in range(8)]
