"""``dmedian verify`` on a real broker: it confirms a correct pipeline and catches a forged count."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import orjson
import pytest
from confluent_kafka import TopicPartition

from pipeline.core.sketch import ShardState
from pipeline.core.wire import SketchSnapshot
from pipeline.kafka.clients import admin_client, producer
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from pipeline.kafka.produce import produce_values
from tests.integration.harness import Deployment

pytestmark = pytest.mark.integration

FloatArray = npt.NDArray[np.float64]


def _to(partition: int) -> Callable[[int], int]:
    return lambda _sequence: partition


def _exact(data: FloatArray, q: float) -> float:
    """The value served quantiles estimate (DataSketches' exclusive rank), from numpy."""
    ordered, n = np.sort(data), data.size
    if math.isclose(q * n, round(q * n), abs_tol=1e-9):
        return float(ordered[min(round(q * n), n - 1)])
    return float(np.quantile(data, q, method="inverted_cdf"))


def _send_snapshot(deployment: Deployment, shard: int, values: FloatArray, last_offset: int) -> None:
    state = ShardState.empty(shard, deployment.settings.sketch_k)
    state.apply(values, last_offset)
    snapshot = SketchSnapshot.from_state(state, 1)
    produce_values(producer(deployment.settings), deployment.settings.topic_sketches, iter([snapshot.to_bytes()]),
                   key=lambda _: str(shard).encode())  # fmt: skip


def test_verify_confirms_a_worker_s_estimate_with_ranks_numpy_agrees_with(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(3)
    deployment.worker()
    rng = np.random.default_rng(21)
    shards = [
        np.concatenate([generate(Distribution.LOGNORMAL, 60_000, seed=21), [1e300, -1e300]]),
        np.round(rng.normal(0, 1, 50_000), 1),  # ties everywhere
        rng.integers(0, 10, 40_000).astype(np.float64),  # ten values: ties at every quantile
    ]
    deployment.produce(shards[0][:-2], MessageFormat.FLOAT64, 1000, partition=_to(0))
    deployment.produce_raw([b"1e300", b"-1e300"], partition=0)
    deployment.produce(shards[1], MessageFormat.JSON_ARRAY, 500, partition=_to(1))
    garbage = [b"hello", b'[1.5, "x", 2.5]', b"NaN", b""]  # 3 bad messages, 1 bad element
    deployment.produce_raw(garbage, partition=1)
    shards[1] = np.concatenate([shards[1], [1.5, 2.5]])
    deployment.produce(shards[2], MessageFormat.FLOAT64, 700, partition=_to(2))
    everything = np.concatenate(shards)
    record = deployment.wait_for_n(everything.size)

    result = deployment.cli("verify", "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    report = orjson.loads(result.stdout)
    assert report["ok"] is True
    assert report["n"] == everything.size
    assert report["record"]["relation"] == "matches"
    for row, data in zip(report["shards"], shards, strict=True):
        assert row["n_input"] == row["n_snapshot"] == data.size, row
        assert row["rejected_input"] == row["rejected_snapshot"] == (4 if row["shard"] == 1 else 0)
        assert (row["min"], row["max"]) == (data.min(), data.max())
    served = next(e for e in report["estimates"] if e["label"] == "served")
    assert [q["served"] for q in served["quantiles"]] == [e.band.value for e in record.quantiles]
    ordered = np.sort(everything)
    for q in served["quantiles"]:
        assert q["below"] == np.searchsorted(ordered, q["served"], "left")
        assert q["at_or_below"] == np.searchsorted(ordered, q["served"], "right")
        assert q["exact"] == _exact(everything, q["q"])
        assert q["inside"] is True
    assert report["passes"] >= 1
    assert report["peak_rss_mb"] > 0


def test_verify_fails_on_a_snapshot_that_claims_one_number_too_few(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(2)  # no worker: the snapshots are forged
    data = [generate(Distribution.NORMAL, 5_000, seed=22), generate(Distribution.UNIFORM, 5_000, seed=23)]
    for shard, values in enumerate(data):
        deployment.produce(values, MessageFormat.FLOAT64, 100, partition=_to(shard))
    _send_snapshot(deployment, 0, data[0], last_offset=49)
    _send_snapshot(deployment, 1, data[1][1:], last_offset=49)  # offsets 0..49 hold 5,000 numbers

    result = deployment.cli("verify", "--json", "--settle", "0")

    assert result.returncode == 1, result.stdout + result.stderr
    report = orjson.loads(result.stdout)
    assert report["ok"] is False
    assert report["record"]["relation"] == "missing"
    first, second = report["shards"]
    assert first["ok"] is True
    assert second["ok"] is False
    assert (second["n_snapshot"], second["n_input"]) == (4_999, 5_000)
    assert any(p.startswith("n: snapshot says 4999, input has 5000") for p in second["problems"])


def test_verify_refuses_when_covered_records_were_deleted(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(1)
    values = generate(Distribution.NORMAL, 2_000, seed=24)
    deployment.produce(values, MessageFormat.FLOAT64, 100, partition=_to(0))
    _send_snapshot(deployment, 0, values, last_offset=19)
    topic = deployment.settings.topic_numbers
    admin = admin_client(deployment.settings)  # held: a collected client never completes its futures
    for future in admin.delete_records([TopicPartition(topic, 0, 5)]).values():
        future.result(timeout=30)

    result = deployment.cli("verify", "--json", "--settle", "0")

    assert result.returncode == 1, result.stdout + result.stderr
    report = orjson.loads(result.stdout)
    assert report["ok"] is False
    assert "deleted" in report["error"]
    assert "cannot be exact" in report["error"]
