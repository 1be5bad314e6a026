"""Edge shards on the real broker: sources that send snapshots beside the partition shards."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import datasketches
import numpy as np
import pytest

from pipeline.core.source_contract import source_key
from pipeline.core.source_state import SourceOptions, SourceState
from pipeline.core.source_wire import SourceSnapshot
from pipeline.core.wire import MedianRecord
from pipeline.kafka.clients import producer
from pipeline.kafka.follow import wait_for_record
from pipeline.kafka.generate import MessageFormat
from pipeline.kafka.produce import produce_values
from pipeline.kafka.sketches_log import read_sketches_log
from pipeline.source import SketchingSource, SnapshotSender
from pipeline.source.state_file import SourceStateFile
from tests.foreign_sketches import java_kll_doubles
from tests.integration.harness import REPO, Deployment

pytestmark = pytest.mark.integration


def _assert_within_bound(record: MedianRecord, values: np.ndarray) -> None:
    """Each served quantile's exact rank in ``values`` is within the record's rank bound of q."""
    ordered = np.sort(values)
    for estimate in (*record.quantiles,):
        x = estimate.band.value
        low = np.searchsorted(ordered, x, side="left") / ordered.size
        high = np.searchsorted(ordered, x, side="right") / ordered.size
        bound = record.bound_of(estimate)
        assert low - bound <= estimate.q <= high + bound, (estimate.q, x, low, high, bound)


def test_a_sketching_source_and_partition_shards_feed_one_record(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(4)
    deployment.worker()
    rng = np.random.default_rng(7)
    partition_values = rng.normal(0.0, 1.0, 20_000)
    edge_values = rng.normal(2.0, 1.0, 30_000)
    deployment.produce(partition_values, MessageFormat.JSON_ARRAY, 500)
    with SketchingSource("svc-a", deployment.settings) as source:
        for chunk in np.array_split(edge_values, 30):
            source.add_many(chunk)
        source.add(float("nan"))  # refused, and counted
    assert source.name.startswith("svc-a@")
    record = deployment.wait_for_n(50_000)
    assert (record.shards, record.sources) == (4, 1)
    assert record.rejected == 1
    _assert_within_bound(record, np.concatenate([partition_values, edge_values]))
    # verify re-reads the input topic: it audits the partition shards, and says why not the record.
    audit = deployment.cli("verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "also counts 1 edge shard(s)" in audit.stdout
    assert "20,000 numbers" in audit.stdout


def test_a_java_serialized_sketch_is_ingested_as_an_edge_shard(
    deploy: Callable[..., Deployment], tmp_path: Path
) -> None:
    deployment = deploy(2)
    deployment.worker()
    values = np.random.default_rng(11).lognormal(0.0, 1.0, 100_000)
    path = tmp_path / "java.kll"
    path.write_bytes(java_kll_doubles(values.tolist(), k=200))
    result = deployment.cli("ingest-sketch", "--source-id", "java-1", str(path))
    assert result.returncode == 0, result.stderr
    record = deployment.wait_for_n(100_000)
    assert (record.shards, record.sources) == (0, 1)
    _assert_within_bound(record, values)

    # A coarser sketch would widen every record's bound: refused before it leaves, in one line.
    coarse = tmp_path / "coarse.kll"
    coarse.write_bytes(java_kll_doubles(values[:1000].tolist(), k=50))
    result = deployment.cli("ingest-sketch", "--source-id", "java-2", str(coarse))
    assert result.returncode != 0
    assert "k_too_small" in result.stderr
    assert "Traceback" not in result.stderr
    garbage = tmp_path / "garbage.kll"
    garbage.write_bytes(b"\x05\x01\x0f\x00" + bytes(60))
    result = deployment.cli("ingest-sketch", "--source-id", "java-3", str(garbage))
    assert result.returncode != 0
    assert "not a KLL doubles sketch" in result.stderr, result.stderr


def test_hostile_edge_messages_are_dead_lettered_with_their_reasons(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(1, source_id_pattern="[a-z]+-[0-9]+")
    settings = deployment.settings
    deployment.worker()
    sketch_of = SourceSnapshot.of_sketch

    def snapshot(name: str, seq: int, count: int, k: int = 200) -> SourceSnapshot:
        sketch = datasketches.kll_doubles_sketch(k)
        sketch.update(np.random.default_rng(seq).normal(0.0, 1.0, count))
        return sketch_of(name, seq, sketch, ts=1_700_000_000_000 + seq)

    good = snapshot("edge-1", 5, 2_000)
    records: list[tuple[bytes, bytes]] = [
        (source_key("edge-1"), good.to_bytes()),
        (source_key("edge-1"), snapshot("edge-1", 3, 2_500).to_bytes()),  # seq_regressed
        (source_key("edge-1"), snapshot("edge-1", 5, 2_600).to_bytes()),  # seq_reused
        (source_key("edge-1"), good.to_bytes()),  # the same snapshot again: no-op, not an error
        (source_key("Edge_1"), snapshot("Edge_1", 1, 100).to_bytes()),  # bad_source_id (pattern)
        (source_key("edge-2"), snapshot("edge-2", 1, 100, k=100).to_bytes()),  # k_too_small
        (source_key("edge-3"), good.to_bytes()),  # key_mismatch
        (source_key("edge-4"), snapshot("edge-4", 1, 2_000).to_bytes()[:-12]),  # bad_sketch (truncated)
        (source_key("edge-1"), b"DMSK\x01\x02\x00\x00\x00{}"),  # bad_header, the last record under edge-1's key
    ]
    produce_values(producer(settings), settings.topic_sketches, [v for _, v in records],
                   key=lambda i: records[i - 1][0])  # fmt: skip
    record = wait_for_record(settings, lambda r: r.n >= good.n, 90)
    assert record is not None, deployment.worker_logs()
    assert (record.n, record.sources) == (2_000, 1)
    letters = deployment.dead_letters()
    reasons = sorted(letter.reason for letter in letters)
    assert reasons == sorted(
        f"snapshot_{r}"
        for r in (
            "seq_regressed",
            "seq_reused",
            "bad_source_id",
            "k_too_small",
            "key_mismatch",
            "bad_sketch",
            "bad_header",
        )
    ), reasons
    # The rebuild (a takeover) reads the same verdicts; compaction keeps the last record under a key, and
    # the aggregator wrote edge-1's held snapshot back after the refusal, so a rebuild still finds it.
    deadline = time.monotonic() + 30
    log = read_sketches_log(settings)
    while log.records_read < len(records) + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        log = read_sketches_log(settings)
    assert set(log.sources) == {"edge-1"}
    assert log.sources["edge-1"] == good
    last = [value for _, key, value in deployment.read_topic(settings.topic_sketches) if key == source_key("edge-1")]
    assert last[-1] == good.to_bytes()

    listing = deployment.cli("sources", "list")
    assert listing.returncode == 0, listing.stderr
    assert "edge-1" in listing.stdout
    assert "1 edge shard(s), 2,000 numbers" in listing.stderr

    # Retired: its numbers leave the estimate.
    result = deployment.cli("sources", "retire", "edge-1")
    assert result.returncode == 0, result.stderr
    after = wait_for_record(settings, lambda r: r.sources == 0, 60)
    assert after is not None
    assert after.n == 0


def test_a_stateful_source_resumes_and_counts_nothing_twice(deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    deployment = deploy(1)
    deployment.worker()
    state = tmp_path / "state"
    options = SourceOptions(idle_ms=100)
    first = np.arange(1_000, dtype=np.float64)
    with SketchingSource("steady", deployment.settings, state_path=state, options=options) as source:
        source.add_many(first)
    assert source.name == "steady"
    deployment.wait_for_n(1_000)
    # Resumed: the sketch and the sequence number go on; its first snapshot replaces the last one.
    with SketchingSource("steady", deployment.settings, state_path=state, options=options) as again:
        assert again.n == 1_000
        again.add_many(np.arange(500, dtype=np.float64))
    record = deployment.wait_for_n(1_500)
    assert record.sources == 1
    assert [letter.reason for letter in deployment.dead_letters()] == []


def _numbers_text(values: np.ndarray) -> str:
    return "".join(f"{x!r}\n" for x in values.tolist())


def test_n_is_exact_across_a_worker_kill_and_a_source_kill_with_a_state_file(
    deploy: Callable[..., Deployment], tmp_path: Path
) -> None:
    """A mixed deployment: partition shards and one edge shard (`dmedian source --state`) feed one record.

    The source is killed with SIGKILL after its numbers were partly saved, and the worker too; both restart.
    The persisted point is what the killed source's state file holds, read once the process is dead.
    """
    deployment = deploy(4)
    first_worker = deployment.worker()
    rng = np.random.default_rng(5)
    partition_values = [rng.normal(0.0, 1.0, 40_000), rng.normal(0.0, 1.0, 20_000)]
    edge_values = rng.normal(3.0, 1.0, 22_000)
    deployment.produce(partition_values[0], MessageFormat.JSON_ARRAY, 500)
    state = tmp_path / "edge-state"
    command = [sys.executable, "-m", "pipeline", "source", "--id", "edge-1", "--state", str(state)]
    log = (tmp_path / "source.log").open("w")
    source = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=log, env=deployment.env, cwd=REPO,
                              text=True)  # fmt: skip
    try:
        assert source.stdin is not None
        source.stdin.write(_numbers_text(edge_values[:10_000]))
        source.stdin.flush()
        # Its input paused: the source sends what it holds (saved first), and the record counts it.
        deployment.wait_for_n(50_000, timeout_s=90)
        source.stdin.write(_numbers_text(edge_values[10_000:15_000]))
        source.stdin.flush()
        time.sleep(0.5)
    finally:
        source.kill()  # SIGKILL: no flush, no last snapshot
        source.wait(10)
        assert source.stdin is not None
        source.stdin.close()
        log.close()
    first_worker.kill()
    deployment.produce(partition_values[1], MessageFormat.FLOAT64, 1_000)
    deployment.worker()

    saved_file = SourceStateFile(state)
    saved = saved_file.load()
    saved_file.close()
    assert saved is not None
    persisted = SourceState.from_bytes(saved, SourceOptions()).n
    assert 10_000 <= persisted <= 15_000  # the last save: at the snapshot, or a periodic one after it

    # Restarted with its state file: it resumes the sketch; 7,000 more numbers, then end of input.
    restarted = subprocess.run(command, input=_numbers_text(edge_values[15_000:]), env=deployment.env, cwd=REPO,
                               capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert restarted.returncode == 0, restarted.stderr
    assert f"n={persisted} resumed" in restarted.stderr

    expected = 60_000 + persisted + 7_000
    record = deployment.wait_for_n(expected)
    assert (record.shards, record.sources) == (4, 1)
    counted = np.concatenate([*partition_values, edge_values[:persisted], edge_values[15_000:]])
    assert counted.size == expected
    _assert_within_bound(record, counted)
    assert deployment.dead_letters() == []


def test_dmedian_source_counts_garbage_and_fails_in_one_line(deploy: Callable[..., Deployment], tmp_path: Path) -> None:
    deployment = deploy(1)
    deployment.worker()
    numbers = tmp_path / "numbers.txt"
    numbers.write_text("1 2 3\nfour 5,6\n\n7e0 nan inf\n")
    result = deployment.cli("source", "--id", "file-1", str(numbers))
    assert result.returncode == 0, result.stderr
    assert "'four' is not a number" in result.stderr
    record = deployment.wait_for_n(6)  # 1 2 3 5 6 7; "four", nan and inf are refused and counted
    assert (record.sources, record.rejected) == (1, 3)
    for args, message in (
        (("source", "--id", "bad.id"), "is not a source id"),
        (("source", "--id", "x@run"), "run token"),
        (("source", "--id", "ok", str(tmp_path / "missing.txt")), "is not a readable file"),
        (("ingest-sketch", "--source-id", "ok", str(tmp_path / "missing.kll")), "cannot read"),
        (("sources", "retire", "no/slash"), "is not a source id"),
    ):
        failed = deployment.cli(*args, timeout_s=60)
        assert failed.returncode == 2, (args, failed.stderr)
        assert message in failed.stderr
        assert "Traceback" not in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr


def test_an_asyncio_sender_serves_sources_from_the_event_loop(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(1)
    deployment.worker()
    values = np.random.default_rng(9).normal(0.0, 1.0, 20_000)

    async def main() -> set[str]:
        sender = SnapshotSender(deployment.settings, mode="asyncio")
        sources = [SketchingSource(f"task-{i}", deployment.settings, sender=sender) for i in range(2)]
        for chunk in np.array_split(values, 40):
            sources[0].add_many(chunk[: chunk.size // 2])
            sources[1].add_many(chunk[chunk.size // 2 :])
            await asyncio.sleep(0.01)  # the sender's ticks run between these, on this loop
        tasks = {task.get_name() for task in asyncio.all_tasks()}
        assert "snapshot-sender" not in {thread.name for thread in threading.enumerate()}
        for source in sources:
            await source.aclose()
        assert await asyncio.to_thread(sender.close) == 0
        return tasks

    assert "snapshot-sender" in asyncio.run(main())  # no sender thread: a task on the loop
    record = deployment.wait_for_n(20_000)
    assert record.sources == 2
    _assert_within_bound(record, values)
