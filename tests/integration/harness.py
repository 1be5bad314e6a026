"""A deployment for one integration test: unique topics and app id, real workers.

Workers run as real processes (``python -m pipeline worker``) so that tests can
stop, restart and kill them as a user would. Every wait has a timeout, and a
failing test gets each worker's log tail in its report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from config import Settings, load_settings
from pipeline.core.dead_letter import DeadLetter
from pipeline.core.wire import MedianRecord, SketchSnapshot
from pipeline.kafka.clients import admin_client, consumer, producer
from pipeline.kafka.follow import latest_snapshots, wait_for_record
from pipeline.kafka.generate import MessageFormat, encode_messages
from pipeline.kafka.produce import produce_values
from pipeline.localbroker import free_port
from topics import topic_set
from topics.admin import create_topics

__all__ = ["Deployment", "WorkerProcess"]

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One ``dmedian worker`` process with its own data dir, web port and log."""

    def __init__(self, name: str, env: dict[str, str], data_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.data_dir = data_dir
        self.log_path = log_dir / f"{name}.log"
        self.web_port = free_port()
        self._env = env | {"DMEDIAN_DATA_DIR": str(data_dir), "DMEDIAN_WEB_PORT": str(self.web_port)}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker"],
                env=self._env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """Graceful stop (SIGTERM), as an operator would; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or commit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stats(self) -> dict[str, Any]:
        """The worker's ``/stats`` view."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/stats", timeout=10) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body

    def try_stats(self) -> dict[str, Any] | None:
        """``/stats``, or None while the worker's web server is not up (or it is dead)."""
        try:
            return self.stats()
        except OSError:
            return None

    def wait_until_owning(self, timeout_s: float = 90.0) -> list[str]:
        """Wait until the worker owns at least one shard; return the shards it owns."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = self.try_stats()
            if stats and stats["shards"]:
                return sorted(stats["shards"])
            time.sleep(0.5)
        raise AssertionError(f"{self.name} owned no shard within {timeout_s} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Deployment:
    """Topics, settings and workers of one test, all named uniquely."""

    def __init__(self, bootstrap: str, tmp: Path, partitions: int = 8, **settings: str) -> None:
        run = uuid.uuid4().hex[:10]
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.env = (
            # DMEDIAN_FETCHER passes through: the suite runs on either fetcher of the input.
            {k: v for k, v in os.environ.items() if k == "DMEDIAN_FETCHER" or not k.startswith("DMEDIAN_")}
            | {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "DMEDIAN_APP_ID": f"test-{run}",
                "DMEDIAN_TOPIC_NUMBERS": f"test-{run}-numbers",
                "DMEDIAN_TOPIC_SKETCHES": f"test-{run}-sketches",
                "DMEDIAN_TOPIC_MEDIANS": f"test-{run}-medians",
                "DMEDIAN_TOPIC_DEAD_LETTERS": f"test-{run}-dead-letters",
                "DMEDIAN_NUMBERS_PARTITIONS": str(partitions),
                "DMEDIAN_EMIT_INTERVAL_MS": "100",
                "DMEDIAN_PUBLISH_INTERVAL_MS": "100",
                "DMEDIAN_LOG_LEVEL": "info",
            }
            | {f"DMEDIAN_{key.upper()}": value for key, value in settings.items()}
        )
        self.settings: Settings = load_settings(environ=self.env)
        self.workers: list[WorkerProcess] = []
        create_topics(admin_client(self.settings), topic_set(self.settings))

    def worker(self, name: str | None = None, data_dir: Path | None = None) -> WorkerProcess:
        """Start a worker (a fresh data dir unless one is given)."""
        name = name or f"worker-{len(self.workers) + 1}"
        worker = WorkerProcess(name, self.env, data_dir or self.tmp / f"{name}-{len(self.workers)}", self.tmp)
        self.workers.append(worker.start())
        return worker

    def produce(
        self,
        values: npt.NDArray[np.float64],
        fmt: MessageFormat,
        batch_size: int = 1000,
        partition: Callable[[int], int] | None = None,
    ) -> int:
        """Send ``values``; by default message i goes to partition i mod the topic's partitions.

        Not the producer's partitioner: its sticky batches can put every message of a
        small run on one partition, and tests that expect every shard to report would flake.
        """
        partitions = self.settings.numbers_partitions
        return produce_values(
            producer(self.settings),
            self.settings.topic_numbers,
            encode_messages(values, fmt, batch_size),
            partition=partition or (lambda sequence: (sequence - 1) % partitions),
        )

    def produce_raw(self, values: list[bytes], partition: int | None = None) -> int:
        return produce_values(
            producer(self.settings),
            self.settings.topic_numbers,
            iter(values),
            partition=(lambda _: partition) if partition is not None else None,
        )

    def wait_for_n(self, n: int, timeout_s: float = 180.0) -> MedianRecord:
        """The first ``medians`` record with exactly ``n`` numbers; fails on timeout or a dead worker."""
        record = wait_for_record(
            self.settings,
            lambda r: r.n >= n,
            timeout_s,
            give_up=lambda: bool(self.workers) and not any(w.alive for w in self.workers),
        )
        assert record is not None, f"no medians record within {timeout_s} s\n{self.worker_logs()}"
        assert record.n == n, f"n={record.n}, expected {n}\n{self.worker_logs()}"
        return record

    def snapshots(self) -> dict[int, SketchSnapshot]:
        return latest_snapshots(self.settings)

    def read_topic(
        self, topic: str, partitions: int = 1, timeout_s: float = 30.0
    ) -> Iterator[tuple[int, bytes | None, bytes | None]]:
        """Every record of ``topic`` as (partition, key, value), read to the end."""
        client = consumer(self.settings, f"test-reader-{uuid.uuid4().hex[:8]}")
        try:
            client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
            ends = {p: client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
            done = {p for p, end in ends.items() if end == 0}
            deadline = time.monotonic() + timeout_s
            while len(done) < partitions:
                assert time.monotonic() < deadline, f"reading {topic} timed out"
                message = client.poll(0.5)
                if message is None:
                    continue
                error, partition, offset = message.error(), message.partition(), message.offset()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        assert partition is not None  # an end-of-partition event names its partition
                        done.add(partition)
                    continue
                assert partition is not None  # a consumed record has a partition and an offset
                assert offset is not None
                yield partition, message.key(), message.value()
                if offset >= ends[partition] - 1:
                    done.add(partition)
        finally:
            client.close()

    def dead_letters(self) -> list[DeadLetter]:
        return [DeadLetter.from_json(v) for _, _, v in self.read_topic(self.settings.topic_dead_letters) if v]

    def cli(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``dmedian ARGS`` against this deployment."""
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *args], env=self.env, cwd=REPO,
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip

    def worker_logs(self) -> str:
        return "\n".join(f"--- {w.name} (alive={w.alive}) ---\n{w.log_tail()}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
