"""The pipeline end to end on a real broker: exact counts, bounded error, restarts, bad input."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import orjson
import pytest

from pipeline.core.codec import encode_float64_block
from pipeline.core.exact import check_rank
from pipeline.core.wire import MedianRecord
from pipeline.kafka.follow import wait_for_record
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from tests.integration.harness import Deployment

pytestmark = pytest.mark.integration

FloatArray = npt.NDArray[np.float64]


def _round_robin(partitions: int) -> Callable[[int], int]:
    return lambda sequence: (sequence - 1) % partitions


def _shard_data(values: FloatArray, fmt: MessageFormat, batch: int, partitions: int) -> list[FloatArray]:
    """Which numbers land in which partition when messages go round robin."""
    size = 1 if fmt is MessageFormat.SINGLE else batch
    messages = np.array_split(values, np.arange(size, values.size, size))
    return [
        np.concatenate(messages[p::partitions]) if messages[p::partitions] else np.empty(0) for p in range(partitions)
    ]


def _produce_mixed(
    deployment: Deployment, parts: list[tuple[FloatArray, MessageFormat]], partitions: int
) -> list[FloatArray]:
    shards: list[list[FloatArray]] = [[] for _ in range(partitions)]
    for values, fmt in parts:
        deployment.produce(values, fmt, 1000, partition=_round_robin(partitions))
        for p, data in enumerate(_shard_data(values, fmt, 1000, partitions)):
            shards[p].append(data)
    return [np.concatenate(s) for s in shards]


def _assert_within_bounds(record: MedianRecord, data: FloatArray) -> None:
    ordered = np.sort(data)
    checks = [(0.5, record.median.value)] + [(e.q, e.band.value) for e in record.quantiles]
    for q, served in checks:
        check = check_rank(ordered, q, served)
        assert check.within(record.rank_error), f"q={q}: served {served}, {check}, bound {record.rank_error}"
    exact_median = check_rank(ordered, 0.5, record.median.value).exact
    assert record.median.lower <= exact_median <= record.median.upper


def test_a_million_numbers_in_three_formats_give_exact_n_and_bounded_error(deploy: Callable[..., Deployment]) -> None:
    partitions = 8
    deployment = deploy(partitions)
    deployment.worker()
    parts = [
        (generate(Distribution.NORMAL, 450_000, seed=1), MessageFormat.FLOAT64),
        (generate(Distribution.PARETO, 450_000, seed=2), MessageFormat.JSON_ARRAY),
        (generate(Distribution.SORTED, 100_000, seed=3), MessageFormat.SINGLE),
    ]
    shard_data = _produce_mixed(deployment, parts, partitions)
    everything = np.concatenate([values for values, _ in parts])

    record = deployment.wait_for_n(1_000_000, timeout_s=300)

    assert record.shards == partitions
    assert record.rejected == 0
    _assert_within_bounds(record, everything)
    snapshots = deployment.snapshots()
    assert sorted(snapshots) == list(range(partitions))
    for shard, snapshot in snapshots.items():
        assert snapshot.n == shard_data[shard].size
        check = check_rank(np.sort(shard_data[shard]), 0.5, snapshot.median.value)
        assert check.within(snapshot.rank_error), f"shard {shard}: {check}"


def test_two_workers_share_the_shards_and_keep_n_exact(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(8)
    deployment.worker()
    deployment.worker()
    values = generate(Distribution.LOGNORMAL, 300_000, seed=4)
    deployment.produce(values[:150_000], MessageFormat.JSON_ARRAY, 500)
    deployment.produce(values[150_000:], MessageFormat.FLOAT64, 500)

    record = deployment.wait_for_n(300_000, timeout_s=240)

    _assert_within_bounds(record, values)
    assert record.shards == 8


@pytest.mark.parametrize("delivery", ["batch", "event"])
def test_restart_restores_every_shard_from_its_own_changelog_partition(
    deploy: Callable[..., Deployment], delivery: str
) -> None:
    partitions = 4
    deployment = deploy(partitions, delivery=delivery)
    first = deployment.worker("first")
    before = generate(Distribution.UNIFORM, 80_000, seed=5)
    deployment.produce(before, MessageFormat.FLOAT64, 1000, partition=_round_robin(partitions))
    deployment.wait_for_n(80_000)
    assert first.stop() == 0

    # A fresh data dir: the new worker has no local RocksDB and must restore
    # each shard's sketch from the changelog topic.
    deployment.worker("second")
    after = generate(Distribution.NORMAL, 40_000, seed=6)
    deployment.produce(after, MessageFormat.JSON_ARRAY, 1000, partition=_round_robin(partitions))

    record = deployment.wait_for_n(120_000)

    _assert_within_bounds(record, np.concatenate([before, after]))
    changelog = f"{deployment.settings.app_id}-shard-sketches-changelog"
    seen: dict[int, int] = {}
    for partition, key, _ in deployment.read_topic(changelog, partitions):
        assert key == str(partition).encode(), f"shard {key!r} written to changelog partition {partition}"
        seen[partition] = seen.get(partition, 0) + 1
    assert sorted(seen) == list(range(partitions))


def test_bad_input_goes_to_dead_letters_with_its_reason_and_good_numbers_count(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(2)
    worker = deployment.worker()
    bad = [b"", b"hello", b'{"a": 1}', b"[[2]]", b"NaN", b'"5"', b"1e400", b"true", encode_float64_block([1.0])[:-3]]
    expected = {"empty", "malformed_json", "not_a_number", "nested_array", "non_finite", "bad_float64_block"}
    partial = orjson.dumps([1.0, "x", 2.0, None, 3.0])  # three good numbers, two bad elements
    good = [orjson.dumps(float(v)) for v in range(100)]
    deployment.produce_raw([*bad, partial, *good], partition=0)

    record = deployment.wait_for_n(103)

    letters = deployment.dead_letters()
    assert len(letters) == len(bad) + 1
    assert {letter.reason for letter in letters} == expected | {"partial_batch"}
    by_offset = {letter.offset: letter for letter in letters}
    for offset, value in enumerate(bad):
        assert by_offset[offset].value == value
        assert by_offset[offset].topic == deployment.settings.topic_numbers
        assert by_offset[offset].partition == 0
    assert by_offset[len(bad)].bad_elements == ((1, "not_a_number"), (3, "not_a_number"))
    # One count per rejected message, one per rejected element of the partial batch.
    assert record.rejected == len(bad) + 2
    counters = worker.stats()["rejected"]
    assert counters == {"empty": 1, "malformed_json": 2, "not_a_number": 5, "nested_array": 1, "non_finite": 1,
                        "bad_float64_block": 1}  # fmt: skip


def test_watch_and_shards_commands_show_the_served_estimate(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(3)
    deployment.worker()
    values = generate(Distribution.BIMODAL, 30_000, seed=9)
    deployment.produce(values, MessageFormat.FLOAT64, 100, partition=_round_robin(3))
    record = deployment.wait_for_n(values.size)

    watch = deployment.cli("watch", "--json", "--until-n", str(values.size), "--timeout", "60")
    assert watch.returncode == 0, watch.stderr
    watched = MedianRecord.from_json(watch.stdout.splitlines()[-1].encode())
    latest = wait_for_record(deployment.settings, lambda r: r.n >= values.size, 30)
    assert latest is not None
    # The latest record, not the first with this n: a later one may re-merge the same shards.
    assert (watched.n, watched.median.value) == (latest.n, latest.median.value)
    assert watched.n == record.n

    shards = deployment.cli("shards", "--json")
    assert shards.returncode == 0, shards.stderr
    rows = [orjson.loads(line) for line in shards.stdout.splitlines()]
    assert [row["shard"] for row in rows] == [0, 1, 2]
    assert sum(row["n"] for row in rows) == values.size
    assert all(row["lower"] <= row["median"] <= row["upper"] for row in rows)


@pytest.mark.parametrize("delivery", ["batch", "event"])
def test_sigkill_mid_stream_then_restart_counts_every_number_once(
    deploy: Callable[..., Deployment], delivery: str
) -> None:
    deployment = deploy(4, delivery=delivery)
    worker = deployment.worker("crashing")
    # Enough single-number messages that the crash lands mid-stream on either path.
    values = generate(Distribution.NORMAL, 400_000 if delivery == "batch" else 60_000, seed=8)
    deployment.produce(values, MessageFormat.SINGLE)  # slow per-message path: the crash lands mid-stream
    partway = wait_for_record(deployment.settings, lambda r: r.n > 0, 120)
    assert partway is not None, deployment.worker_logs()
    worker.kill()
    assert partway.n < values.size, "the worker finished before the crash; the test proves nothing"

    # Same data dir: local RocksDB state plus the changelog; replayed records after
    # the last commit must be skipped by the stored source offset, not counted twice.
    deployment.worker("restarted", data_dir=worker.data_dir)
    record = deployment.wait_for_n(values.size)

    _assert_within_bounds(record, values)
