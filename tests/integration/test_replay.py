"""``dmedian replay``: rebuilding from the input topic (all of it, or from a time) and from ``sketches``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import orjson
import pytest

from pipeline.core.exact import check_rank
from pipeline.core.wire import MedianRecord
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from tests.integration.harness import REPO, Deployment

pytestmark = pytest.mark.integration


def _within(record: MedianRecord, values: np.ndarray) -> None:
    check = check_rank(np.sort(values), 0.5, record.median.value)
    assert check.within(record.rank_bound), f"{check}, bound {record.rank_bound}"


def _records(deployment: Deployment) -> list[MedianRecord]:
    return [MedianRecord.from_json(v) for _, _, v in deployment.read_topic(deployment.settings.topic_medians) if v]


def test_replay_from_the_input_stays_off_the_live_output_until_caught_up_then_takes_over(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(4)
    first, later = generate(Distribution.NORMAL, 300_000, seed=81), generate(Distribution.NORMAL, 100_000, seed=82)
    live = deployment.worker("live")
    deployment.produce(first[:100_000], MessageFormat.SINGLE)
    deployment.produce(first[100_000:], MessageFormat.JSON_ARRAY, 500)
    deployment.wait_for_n(first.size)
    before = len(_records(deployment))

    replay = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "replay", "--take-over", "--timeout", "180"],
        env=deployment.env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert replay.stdout is not None
        deadline = time.monotonic() + 240
        while not any(line.startswith("took over") for line in lines):
            assert time.monotonic() < deadline, "\n".join(lines)
            assert replay.poll() is None, "\n".join(lines)
            lines.append(replay.stdout.readline().strip())
        caught = next(line for line in lines if line.startswith("caught up"))
        assert f"n={first.size:,}" in caught, "\n".join(lines)
        print(f"\n{caught}")

        # Until it caught up, every record on the live topic was the live pipeline's (n complete).
        assert all(r.n == first.size for r in _records(deployment)[before:])

        # It took over: the old workers stop, and new numbers reach the live topic through it.
        assert live.stop() == 0
        deployment.workers.remove(live)
        deployment.produce(later, MessageFormat.FLOAT64, 1000)
        record = deployment.wait_for_n(first.size + later.size, timeout_s=120)
        _within(record, np.concatenate([first, later]))
    finally:
        replay.send_signal(signal.SIGTERM)
        try:
            output, _ = replay.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            replay.kill()
            output, _ = replay.communicate()
    assert replay.returncode == 0, output

    # The aggregator alone, from the compacted topic of the app that now serves.
    rebuilt = deployment.cli("replay", "--sketches", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr + rebuilt.stdout
    assert "rebuilt from" in rebuilt.stderr
    assert orjson.loads(rebuilt.stdout)["n"] == first.size  # the live app's sketches: the first part only


def test_replay_from_a_timestamp_counts_only_what_came_after_it(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(4)
    old, new = generate(Distribution.UNIFORM, 50_000, seed=83), generate(Distribution.LOGNORMAL, 80_000, seed=84)
    deployment.produce(old, MessageFormat.FLOAT64, 1000)
    time.sleep(1.0)
    since_ms = int(time.time() * 1000)
    time.sleep(0.2)
    deployment.produce(new, MessageFormat.FLOAT64, 1000)

    result = deployment.cli("replay", "--from-timestamp", str(since_ms), "--json", "--timeout", "120", timeout_s=180)
    assert result.returncode == 0, result.stderr + result.stdout
    record = MedianRecord.from_json(result.stdout.encode())
    assert record.n == new.size, result.stderr
    _within(record, new)
    assert "live output is untouched" in result.stderr

    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(since_ms / 1000 + 3600))
    future = deployment.cli("replay", "--from-timestamp", iso.replace("+00:00", ""), timeout_s=60)
    assert future.returncode == 2
    assert "no time zone" in future.stderr
