"""Faults on a real broker: workers killed again and again, the aggregator's host lost,
the broker restarted, workers added and removed. Every number counted exactly once."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from pipeline.core.exact import check_rank
from pipeline.core.wire import MedianRecord
from pipeline.kafka.follow import follow_medians, wait_for_record
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from pipeline.localbroker import LocalBroker, LocalBrokerOptions, find_free_port_pair
from tests.integration.background import BackgroundStream
from tests.integration.harness import Deployment, WorkerProcess

pytestmark = pytest.mark.integration


def _assert_within_bounds(record: MedianRecord, values: npt.NDArray[np.float64]) -> None:
    ordered = np.sort(values)
    for q, served in [(0.5, record.median.value)] + [(e.q, e.band.value) for e in record.quantiles]:
        check = check_rank(ordered, q, served)
        assert check.within(record.rank_bound), f"q={q}: served {served}, {check}, bound {record.rank_bound}"


def _wait_for_host(workers: list[WorkerProcess], timeout_s: float = 60.0) -> WorkerProcess:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in workers:
            stats = worker.try_stats()
            if stats and stats["aggregator_hosted"] and stats["last_record"]:
                return worker
        time.sleep(0.3)
    raise AssertionError("no worker hosts the aggregator")


def test_one_of_two_workers_killed_again_and_again_counts_every_number_once(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(8)
    values = generate(Distribution.NORMAL, 2_000_000, seed=61)
    steady = deployment.worker("steady")
    victim = deployment.worker("victim")
    # A third of the chunks are single-number messages, the rest blocks and arrays of 1,000.
    stream = BackgroundStream(deployment, values, chunks=45, pause_s=0.6, batch_size=1000).start()
    assert wait_for_record(deployment.settings, lambda r: r.n > 0, 120) is not None, deployment.worker_logs()

    kills = 0
    while stream.running and kills < 6:
        time.sleep(4)
        victim.kill()  # SIGKILL: no flush, no commit, no goodbye to the group
        kills += 1
        # The same data dir, as a supervisor would restart it: RocksDB plus changelogs.
        victim = deployment.worker("victim", data_dir=victim.data_dir)
    assert kills >= 3, f"the stream ended after {kills} kills; the test proves too little"

    stream.join(240)
    record = deployment.wait_for_n(values.size, timeout_s=300)
    assert steady.alive, steady.log_tail()
    assert record.shards == 8
    _assert_within_bounds(record, values)
    print(f"\n{kills} SIGKILLs mid-stream: n={record.n:,} exact")


def test_the_aggregators_host_killed_another_worker_takes_over_with_a_complete_first_record(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(8)
    values = generate(Distribution.LOGNORMAL, 400_000, seed=62)
    workers = [deployment.worker("a"), deployment.worker("b")]
    deployment.produce(values[:100_000], MessageFormat.SINGLE)
    deployment.produce(values[100_000:], MessageFormat.FLOAT64, 1000)
    deployment.wait_for_n(values.size)

    host = _wait_for_host(workers)
    survivor = next(w for w in workers if w is not host)
    survivor.wait_until_owning()  # both workers hold shards: the group is settled
    killed_at = time.time()
    host.kill()

    # The first record after the kill is the survivor's first output: it must be complete.
    first: MedianRecord | None = None
    for record in follow_medians(deployment.settings):
        if record is not None and record.ts > killed_at * 1000:
            first = record
            break
        assert time.time() - killed_at < 120, f"no record within 120 s of the kill\n{deployment.worker_logs()}"
    arrived = time.time() - killed_at
    assert first is not None
    assert first.n == values.size, f"first record after takeover: n={first.n}\n{survivor.log_tail()}"
    assert first.shards == 8
    _assert_within_bounds(first, values)

    rebuilt = re.findall(
        r"aggregator: rebuilt .* in ([\d.]+) s: .*\(([\d.]+) s since assignment\)", survivor.log_tail(400)
    )
    assert rebuilt, f"the survivor did not log a rebuild\n{survivor.log_tail()}"
    read_s, since_assignment_s = (float(x) for x in rebuilt[-1])
    session_s = deployment.settings.session_timeout_ms / 1000
    print(
        f"\naggregator takeover: first complete record {arrived:.2f} s after SIGKILL "
        f"(group session timeout {session_s:.0f} s); rebuild read {read_s:.3f} s, "
        f"ready {since_assignment_s:.3f} s after assignment"
    )
    assert since_assignment_s <= 5.0
    assert arrived <= session_s + 30.0, "the takeover took far longer than the session timeout"


def test_workers_scale_out_to_three_and_back_in_mid_stream_keep_n_exact(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(8)
    values = generate(Distribution.PARETO, 900_000, seed=63)
    first, second = deployment.worker("first"), deployment.worker("second")
    stream = BackgroundStream(deployment, values, chunks=60, pause_s=0.4).start()
    assert wait_for_record(deployment.settings, lambda r: r.n > 0, 120) is not None, deployment.worker_logs()

    third = deployment.worker("third")
    owned = third.wait_until_owning()
    assert stream.running, "the stream ended before the scale-out; the test proves nothing"
    assert 0 < len(owned) < 8
    assert third.stop() == 0  # scale in again: its shards go back to the first two
    assert stream.running, "the stream ended before the scale-in; the test proves nothing"

    stream.join(240)
    record = deployment.wait_for_n(values.size, timeout_s=240)
    _assert_within_bounds(record, values)
    owners = [set(w.stats()["shards"]) for w in (first, second)]
    assert owners[0] | owners[1] == {str(p) for p in range(8)}
    assert not owners[0] & owners[1]


@pytest.fixture
def own_broker() -> Iterator[LocalBroker]:
    """A broker of this test's own, so that restarting it disturbs no other test."""
    home = Path(tempfile.mkdtemp(prefix="dmedian-restart-"))
    port, controller_port = find_free_port_pair()
    broker = LocalBroker(LocalBrokerOptions(port=port, controller_port=controller_port, home=home / "broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.reset()
        shutil.rmtree(home, ignore_errors=True)


def test_a_broker_restart_mid_stream_is_survived_with_n_exact(own_broker: LocalBroker, tmp_path: Path) -> None:
    deployment = Deployment(own_broker.bootstrap, tmp_path, 4)
    try:
        values = generate(Distribution.BIMODAL, 600_000, seed=64)
        worker = deployment.worker()
        stream = BackgroundStream(deployment, values, chunks=40, pause_s=0.5).start()
        assert wait_for_record(deployment.settings, lambda r: r.n > 0, 120) is not None, deployment.worker_logs()

        own_broker.stop()  # the broker process goes away mid-stream ...
        time.sleep(3)
        assert stream.running, "the stream ended before the broker stopped; the test proves nothing"
        own_broker.start()  # ... and comes back on the same data dir and port

        stream.join(240)
        record = deployment.wait_for_n(values.size, timeout_s=240)
        assert worker.alive, worker.log_tail()
        _assert_within_bounds(record, values)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nbroker log:\n{own_broker.log_tail(60)}") from None
    finally:
        deployment.close()
