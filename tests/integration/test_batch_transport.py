"""The ``dmkafka://`` batch transport against a real broker, with real Faust workers.

A worker (``tests/integration/batch_app.py``) runs one agent on a 4-partition
batch-delivered topic and one on a per-record topic; every event it sees goes to a
JSON-lines file. The tests prove that each record arrives exactly once, in
contiguous batches; that a clean stop commits up to the end offsets, so a restarted
worker resumes exactly there; that the per-record topic is untouched; and that
table writes from batch events land in the batch's changelog partition. Each test runs
with either fetcher of the batch topic (aiokafka, librdkafka).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.broker_fixture import BrokerHandle
from tests.integration.batch_app import PARTITIONS, SINGLES_PARTITIONS
from topics.admin import create_topics
from topics.specs import TopicSpec, changelog_topic

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120.0


@dataclass
class Names:
    """Unique names of one test's app and topics."""

    app_id: str
    numbers: str
    singles: str
    changelog: str

    @classmethod
    def fresh(cls) -> Names:
        app_id = f"batch-{uuid.uuid4().hex[:10]}"
        return cls(app_id, f"{app_id}-numbers", f"{app_id}-singles", changelog_topic(app_id, "counts"))


class Worker:
    """One ``batch_app`` worker process; its events go to ``events_path``."""

    def __init__(self, bootstrap: str, names: Names, tmp: Path, name: str, fetcher: str) -> None:
        self.events_path = tmp / f"{name}.events.jsonl"
        self.log_path = tmp / f"{name}.log"
        self.env = os.environ | {
            "BATCH_APP_BOOTSTRAP": bootstrap,
            "BATCH_APP_ID": names.app_id,
            "BATCH_APP_TOPIC": names.numbers,
            "BATCH_APP_SINGLES": names.singles,
            "BATCH_APP_EVENTS": str(self.events_path),
            "BATCH_APP_DATADIR": str(tmp / f"{name}-data"),
            "BATCH_APP_FETCHER": fetcher,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.batch_app"],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        text = self.events_path.read_text(encoding="utf-8")
        # The worker may be writing: only complete lines count.
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            events = self.events()
            if done(events):
                return events
            assert self.process.poll() is None, f"worker exited ({self.process.returncode})\n{self.log_tail()}"
            time.sleep(0.2)
        raise AssertionError(f"no {what} within {TIMEOUT_S:.0f} s\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM, as an operator stops a worker; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(f"worker ignored SIGTERM for 60 s\n{self.log_tail()}") from None
        return self.process.returncode

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def names(kafka: BrokerHandle) -> Names:
    names = Names.fresh()
    create_topics(
        AdminClient({"bootstrap.servers": kafka.bootstrap}),
        [
            TopicSpec(names.numbers, PARTITIONS, 1),
            TopicSpec(names.singles, SINGLES_PARTITIONS, 1),
            # Declared up front, so Faust never sees the changelog without leaders.
            TopicSpec(names.changelog, PARTITIONS, 1, {"cleanup.policy": "compact"}),
        ],
    )
    return names


@pytest.fixture(params=["aiokafka", "librdkafka"])
def workers(
    kafka: BrokerHandle, names: Names, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], Worker]]:
    started: list[Worker] = []

    def start(name: str) -> Worker:
        started.append(Worker(kafka.bootstrap, names, tmp_path, name, request.param))
        return started[-1]

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait(10)


def produce(bootstrap: str, topic: str, per_partition: int, partitions: int, tag: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for i in range(per_partition):
        for partition in range(partitions):
            producer.produce(topic, value=f"{tag}-{i}".encode(), key=f"k{i}".encode(), partition=partition)
        producer.poll(0)
    assert producer.flush(30) == 0, "messages left unsent"


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    client = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:8]}"})
    try:
        return {p: client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        client.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    client = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = client.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        client.close()


def changelog(bootstrap: str, topic: str) -> list[tuple[int, bytes, bytes]]:
    """Every record of a table changelog as (partition, key, value)."""
    client = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "enable.partition.eof": True,
    })  # fmt: skip
    records: list[tuple[int, bytes, bytes]] = []
    try:
        client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        at_end: set[int] = set()
        deadline = time.monotonic() + 30
        while len(at_end) < PARTITIONS:
            assert time.monotonic() < deadline, f"reading {topic} timed out"
            message = client.poll(0.5)
            if message is None:
                continue
            error, partition = message.error(), message.partition()
            assert partition is not None
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                at_end.add(partition)
                continue
            key, value = message.key(), message.value()
            assert key is not None, "a table write has a key"
            assert value is not None, "a table write has a value"
            records.append((partition, key, value))
    finally:
        client.close()
    return records


def batches_by_partition(events: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {p: [] for p in range(PARTITIONS)}
    for event in events:
        if event["kind"] == "batch":
            found[event["p"]].append(event)
    return found


def counted(events: list[dict[str, Any]], kind: str, partitions: int) -> dict[int, int]:
    counts = dict.fromkeys(range(partitions), 0)
    for event in events:
        if event["kind"] == kind:
            counts[event["p"]] += len(event["offsets"]) if kind == "batch" else 1
    return counts


def assert_contiguous(batches: dict[int, list[dict[str, Any]]], starts: dict[int, int], ends: dict[int, int]) -> None:
    """(c): per partition, batch after batch, the offsets are exactly starts[p] .. ends[p] - 1."""
    for partition, events in batches.items():
        expected = starts[partition]
        for event in events:
            offsets = event["offsets"]
            assert offsets == list(range(expected, expected + len(offsets))), (partition, expected, offsets[:5])
            assert event["offset"] == offsets[-1], "a batch's message offset is its last record's"
            expected = offsets[-1] + 1
        assert expected == ends[partition], (partition, expected, ends[partition])


def test_batches_deliver_each_record_once_and_a_clean_stop_commits_the_end(
    kafka: BrokerHandle, names: Names, workers: Callable[[str], Worker]
) -> None:
    produce(kafka.bootstrap, names.numbers, 3000, PARTITIONS, "a")
    produce(kafka.bootstrap, names.singles, 40, SINGLES_PARTITIONS, "s")
    worker = workers("w1")
    worker.wait_for(lambda events: any(e["kind"] == "batch" for e in events), "first batch")
    produce(kafka.bootstrap, names.numbers, 1000, PARTITIONS, "b")  # while it runs
    ends = end_offsets(kafka.bootstrap, names.numbers, PARTITIONS)
    assert ends == dict.fromkeys(range(PARTITIONS), 4000)

    def complete(events: list[dict[str, Any]]) -> bool:
        singles = sum(counted(events, "single", SINGLES_PARTITIONS).values())
        return counted(events, "batch", PARTITIONS) == ends and singles >= 40 * SINGLES_PARTITIONS

    worker.wait_for(complete, "all records")
    time.sleep(2.0)  # a late duplicate would show up meanwhile
    assert worker.stop() == 0, worker.log_tail()
    events = worker.events()

    # (a) exactly once, per partition; and in several batches (else (c) proves little).
    assert counted(events, "batch", PARTITIONS) == ends
    batches = batches_by_partition(events)
    assert all(len(found) > 1 for found in batches.values()), {p: len(b) for p, b in batches.items()}
    # (c) strictly increasing, contiguous with the previous batch, from 0 to the end.
    assert_contiguous(batches, dict.fromkeys(range(PARTITIONS), 0), ends)
    # (b) the clean stop committed exactly the end offsets.
    assert committed_offsets(kafka.bootstrap, names.app_id, names.numbers, PARTITIONS) == ends
    # (d) the per-record topic: one event per record, with that record's value, committed to the end.
    singles = [e for e in events if e["kind"] == "single"]
    for partition in range(SINGLES_PARTITIONS):
        mine = [e for e in singles if e["p"] == partition]
        assert [e["offset"] for e in mine] == list(range(40)), partition
        assert [e["value"] for e in mine] == [f"s-{i}" for i in range(40)], partition
    singles_ends = end_offsets(kafka.bootstrap, names.singles, SINGLES_PARTITIONS)
    assert committed_offsets(kafka.bootstrap, names.app_id, names.singles, SINGLES_PARTITIONS) == singles_ends
    # Table writes made while handling partition p's batches went to changelog partition p.
    last_count: dict[int, int] = {}
    for partition, key, value in changelog(kafka.bootstrap, names.changelog):
        assert key == str(partition).encode(), (partition, key)
        last_count[partition] = int(value)
    assert last_count == ends


def test_a_restarted_worker_resumes_at_the_committed_offsets_with_its_table(
    kafka: BrokerHandle, names: Names, workers: Callable[[str], Worker]
) -> None:
    produce(kafka.bootstrap, names.numbers, 1500, PARTITIONS, "a")
    first = workers("w1")
    first_ends = end_offsets(kafka.bootstrap, names.numbers, PARTITIONS)
    first.wait_for(lambda events: counted(events, "batch", PARTITIONS) == first_ends, "all records (run 1)")
    assert first.stop() == 0, first.log_tail()
    assert committed_offsets(kafka.bootstrap, names.app_id, names.numbers, PARTITIONS) == first_ends

    produce(kafka.bootstrap, names.numbers, 700, PARTITIONS, "b")
    ends = end_offsets(kafka.bootstrap, names.numbers, PARTITIONS)
    second = workers("w2")  # fresh data dir: its table comes back from the changelog
    second.wait_for(lambda events: counted(events, "batch", PARTITIONS) == {
        p: ends[p] - first_ends[p] for p in range(PARTITIONS)
    }, "the new records (run 2)")  # fmt: skip
    time.sleep(2.0)
    assert second.stop() == 0, second.log_tail()

    # Run 2 starts exactly where run 1 committed: nothing lost, nothing repeated.
    assert_contiguous(batches_by_partition(second.events()), first_ends, ends)
    assert committed_offsets(kafka.bootstrap, names.app_id, names.numbers, PARTITIONS) == ends
    last_count = {partition: int(value) for partition, _, value in changelog(kafka.bootstrap, names.changelog)}
    assert last_count == ends, "the restored table kept counting where run 1 stopped"
