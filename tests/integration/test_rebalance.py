"""Rebalances mid-stream on the batch path: workers join and leave, and ``n`` stays exact."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from pipeline.core.exact import check_rank
from pipeline.kafka.follow import wait_for_record
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from tests.integration.harness import Deployment, WorkerProcess

pytestmark = pytest.mark.integration


class _Stream:
    """Produces ``values`` in chunks from a thread, alternating formats, so workers can move meanwhile."""

    def __init__(self, deployment: Deployment, values: np.ndarray, chunks: int, pause_s: float) -> None:
        self._deployment = deployment
        self._parts = np.array_split(values, chunks)
        self._pause_s = pause_s
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def _run(self) -> None:
        try:
            for i, part in enumerate(self._parts):
                fmt = (MessageFormat.SINGLE, MessageFormat.FLOAT64, MessageFormat.JSON_ARRAY)[i % 3]
                self._deployment.produce(part, fmt, 250)
                time.sleep(self._pause_s)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    def start(self) -> _Stream:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the producer did not finish"
        assert self.error is None, f"producing failed: {self.error!r}"


def _wait_until_owning(worker: WorkerProcess, timeout_s: float = 90.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            owned = sorted(worker.stats()["shards"])
        except OSError:
            owned = []  # its web server is not up yet
        if owned:
            return owned
        time.sleep(0.5)
    raise AssertionError(f"{worker.name} owned no shard within {timeout_s} s\n{worker.log_tail()}")


def test_workers_joining_and_leaving_mid_stream_keep_n_exact(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(8)
    values = generate(Distribution.LOGNORMAL, 600_000, seed=21)
    first = deployment.worker("first")
    stream = _Stream(deployment, values, chunks=60, pause_s=0.25).start()
    assert wait_for_record(deployment.settings, lambda r: r.n > 0, 120) is not None, deployment.worker_logs()

    # A second worker joins: the group rebalances and half the shards move to it.
    second = deployment.worker("second")
    owned = _wait_until_owning(second)
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
