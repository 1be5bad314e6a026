"""Helpers of the soak run (scripts/soak.py): a paced producer, restartable workers, lag and RSS probes.

Kept apart from scripts/bench_pipeline.py, whose helpers the soak imports as they
are: this module only adds what a long run with killed workers needs.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench_pipeline import start_worker

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # noqa: E402 - not re-exported in its stubs
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from config import Settings  # noqa: E402
from pipeline.core.wire import MedianRecord  # noqa: E402
from pipeline.kafka.clients import admin_client, consumer, producer, retrying, watermarks  # noqa: E402
from pipeline.kafka.follow import follow_medians  # noqa: E402
from pipeline.kafka.generate import Distribution, MessageFormat, encode_messages, generate  # noqa: E402
from pipeline.kafka.produce import produce_values  # noqa: E402
from pipeline.localbroker import free_port  # noqa: E402

__all__ = [
    "FORMATS",
    "GroupLag",
    "LatestRecord",
    "PacedProducer",
    "StreamFormat",
    "WorkerSlot",
    "delete_run_topics",
    "group_lag",
    "message_pool",
    "roll_segments_every",
    "rss_mb",
]

logger = logging.getLogger(__name__)

MAX_UNEXPECTED_EXITS = 3


@dataclass(frozen=True)
class StreamFormat:
    """A message format of the soak stream and the numbers each message carries."""

    name: str
    fmt: MessageFormat
    batch: int


# A tuple, not a dict: nothing may add formats at run time.
FORMATS = (
    StreamFormat("single", MessageFormat.SINGLE, 1),
    StreamFormat("json", MessageFormat.JSON_ARRAY, 100),
    StreamFormat("float64", MessageFormat.FLOAT64, 100),
)


def message_pool(stream: StreamFormat, messages: int = 2000, seed: int = 5) -> list[bytes]:
    """Pre-encoded messages to cycle through: encoding on the fly would make the producer the bottleneck."""
    values = generate(Distribution.LOGNORMAL, messages * stream.batch, seed=seed)
    return list(encode_messages(values, stream.fmt, stream.batch))


def rss_mb(pid: int) -> float:
    """VmRSS of a process in MB; NaN once it is gone (a killed worker between two samples)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass(frozen=True)
class GroupLag:
    """The workers' group on the input topic, in messages, summed over partitions."""

    committed: int
    lag: int
    expired: int
    """Messages deleted by retention before the group committed past them (lost input: must stay 0)."""


def _committed(client: Consumer, tps: list[TopicPartition], timeout_s: float = 30.0) -> list[TopicPartition]:
    """The group's committed offsets, retrying while its coordinator moves or loads (a fresh group, a rebalance)."""
    return list(retrying(lambda: client.committed(tps, timeout=10), timeout_s))


def group_lag(settings: Settings) -> GroupLag:
    """Committed offsets of the app id's group against the watermarks; commits nothing itself."""
    client = consumer(settings, settings.app_id)
    try:
        tps = [TopicPartition(settings.topic_numbers, p) for p in range(settings.numbers_partitions)]
        committed = _committed(client, tps)
        committed_sum = lag = expired = 0
        for tp in committed:
            low, high = watermarks(client, TopicPartition(tp.topic, tp.partition))
            # A negative offset means "nothing committed yet": the group starts at the low watermark.
            position = tp.offset if tp.offset >= 0 else low
            committed_sum += max(tp.offset, 0)
            lag += high - position
            expired += max(low - position, 0)
        return GroupLag(committed_sum, lag, expired)
    finally:
        client.close()


def roll_segments_every(settings: Settings, segment_ms: int) -> None:
    """Let retention delete the input after ``segment_ms``: it only deletes closed segments (1 GiB by default)."""
    resource = ConfigResource(
        ResourceType.TOPIC,
        settings.topic_numbers,
        incremental_configs=[ConfigEntry("segment.ms", str(segment_ms), incremental_operation=AlterConfigOpType.SET)],
    )
    admin = admin_client(settings)  # held until the futures resolve: a collected client cancels them
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def delete_run_topics(settings: Settings) -> None:
    """Delete the run's topics and Faust's own (changelogs), all named after its app id; a shared broker keeps none."""
    admin = admin_client(settings)  # held until the futures resolve, as above
    names = [name for name in admin.list_topics(timeout=30).topics if name.startswith(f"{settings.app_id}-")]
    for name, future in admin.delete_topics(names).items() if names else ():
        try:
            future.result(timeout=30)
        except KafkaException as exc:  # cleanup only: say so, and go on
            logger.warning("topic %s not deleted: %s", name, exc)


class PacedProducer:
    """Sends a cycled pool of messages at a rate from a thread, through ``produce_values``."""

    def __init__(self, settings: Settings, pool: list[bytes], batch: int, rate_msgs: float) -> None:
        self._client: Producer | None = producer(settings, linger_ms=20)
        self._topic = settings.topic_numbers
        self._pool = pool
        self._batch = batch
        self._rate = rate_msgs
        self._stop = threading.Event()
        self._handed = 0  # messages handed to the producer so far
        self._total: int | None = None  # acknowledged messages, once all are flushed
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="soak-producer", daemon=True)

    def _messages(self) -> Iterator[bytes]:
        i = 0
        while not self._stop.is_set():
            yield self._pool[i % len(self._pool)]
            i += 1
            self._handed = i

    def _run(self) -> None:
        assert self._client is not None
        try:
            # produce_values waits for every acknowledgement and raises on any failed delivery.
            self._total = produce_values(self._client, self._topic, self._messages(), rate=self._rate, timeout_s=300)
        except BaseException as exc:  # reported by stop(): a silent producer death would read as lag
            self._error = exc
        finally:
            # Let the client go now, not with this object: it would keep calling a broker stopped before that.
            self._client = None

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    @property
    def acked_numbers(self) -> int:
        """Numbers acknowledged so far: those handed over less those still queued or in flight."""
        client = self._client
        if self._total is not None or client is None:
            return (self._total or 0) * self._batch
        return max(self._handed - len(client), 0) * self._batch

    def abort(self) -> None:
        """Stop and drop what is queued (calibration, an early exit): nothing waits for acknowledgements."""
        self._stop.set()
        client = self._client
        if client is not None:
            client.purge()
        self._thread.join(5)

    def stop(self) -> int:
        """Stop, wait for every acknowledgement, and return the numbers produced."""
        self._stop.set()
        self._thread.join(330)
        if self._error is not None:
            raise RuntimeError(f"the producer failed: {self._error}") from self._error
        if self._total is None:
            raise RuntimeError("the producer did not finish flushing in time")
        return self._total * self._batch


class LatestRecord:
    """Follows ``medians`` from a thread and keeps the latest record."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.record: MedianRecord | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-medians", daemon=True)

    def _run(self) -> None:
        for record in follow_medians(self._settings, poll_s=0.5):
            if record is not None:
                self.record = record
            if self._stop.is_set():
                return

    def start(self) -> LatestRecord:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class WorkerSlot:
    """One worker process, killed and restarted on the same data dir, as a supervisor would."""

    def __init__(self, name: str, env: dict[str, str], data_dir: Path, log_dir: Path) -> None:
        self.name = name
        data_dir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
        self._env = env | {"DMEDIAN_DATA_DIR": str(data_dir)}
        self._log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self._log_path.open("ab")
        self.proc = self._start()
        self.unexpected_exits = 0

    def _start(self) -> subprocess.Popen[bytes]:
        # A new web port each time: the killed process's port may linger for a moment.
        return start_worker(self._env | {"DMEDIAN_WEB_PORT": str(free_port())}, self._log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill_and_restart(self) -> None:
        """SIGKILL (no flush, no commit, no leave-group), reap, start again."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = self._start()

    def restart_if_dead(self) -> bool:
        """Restart a worker that exited by itself (counted, and reported at the end)."""
        if self.proc.poll() is None:
            return False
        if self.unexpected_exits >= MAX_UNEXPECTED_EXITS:  # crashing at start-up: restarting cannot help
            raise SystemExit(f"{self.name} keeps exiting (code {self.proc.returncode}):\n{self.log_tail()}")
        logger.warning("%s exited with %s; restarting it (see %s)", self.name, self.proc.returncode, self._log_path)
        self.unexpected_exits += 1
        self.proc = self._start()
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
