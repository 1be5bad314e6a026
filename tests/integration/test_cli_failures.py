"""Every command fails clearly: one line naming the cause and the fix, its exit code, no traceback, no hang.

Each command runs as a subprocess, as an operator would run it, against a real
broker in four situations: nothing listening at the bootstrap address (a stopped
broker), topics that do not exist, topics whose partition counts contradict the
settings, and topics that exist but are empty. The wait for Kafka
(``kafka_timeout_ms``) is set low so that the dead-broker runs end quickly; the
subprocess timeout proves that each command ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from config import Settings, load_settings
from pipeline.errors import ExitCode
from pipeline.kafka.clients import admin_client, consumer, producer, watermarks
from pipeline.localbroker import LocalBroker, free_port
from tests.broker_fixture import BrokerHandle, _local
from tests.integration.harness import REPO
from topics import topic_set
from topics.admin import create_topics

pytestmark = pytest.mark.integration

_DEAD_WAIT_MS = 3000
"""kafka_timeout_ms against the dead address: every run waits this long, whatever the machine."""
_LIVE_WAIT_MS = 20000
"""kafka_timeout_ms against the live broker: it answers in well under this, however loaded CI is."""
_END_WITHIN_S = 90
"""The subprocess timeout: a command still running after it has hung."""

# Each command as an operator would type it. `topics grow --partitions 1` asks for fewer
# partitions than any deployment here has, which is the grow's own partition mismatch.
COMMANDS: dict[str, list[str]] = {
    "verify": ["verify", "--settle", "1"],
    "shards": ["shards"],
    "watch": ["watch", "--timeout", "5"],
    "replay": ["replay", "--timeout", "30"],
    "replay --sketches": ["replay", "--sketches"],
    "produce": ["produce", "--count", "10"],
    "topics create": ["topics", "create"],
    "topics describe": ["topics", "describe"],
    "topics grow": ["topics", "grow", "--partitions", "1"],
    "worker": ["worker"],
    "demo": ["demo", "--count", "300"],
}
# What each situation must say. Commands that create the topics they need (topics
# create, worker, demo) succeed on missing topics, so they are not in that row; the demo
# makes topics of its own, so only a stopped broker concerns it.
MISSING = ["verify", "shards", "watch", "replay", "replay --sketches", "produce", "topics describe", "topics grow"]
MISMATCH = [name for name in COMMANDS if name != "demo"]
EMPTY = ["verify", "shards", "replay", "replay --sketches"]


@dataclass(frozen=True)
class Situation:
    """Environment for the command, and what its one error line must contain."""

    env: dict[str, str]
    code: ExitCode
    says: tuple[str, ...]


def _names(prefix: str, bootstrap: str, wait_ms: int = _LIVE_WAIT_MS) -> dict[str, str]:
    """Unique topic names and app id, on ``bootstrap``, waiting ``wait_ms`` for Kafka."""
    run = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DMEDIAN_KAFKA_TIMEOUT_MS": str(wait_ms),
        "DMEDIAN_APP_ID": f"{run}-app",
        "DMEDIAN_TOPIC_NUMBERS": f"{run}-numbers",
        "DMEDIAN_TOPIC_SKETCHES": f"{run}-sketches",
        "DMEDIAN_TOPIC_MEDIANS": f"{run}-medians",
        "DMEDIAN_TOPIC_DEAD_LETTERS": f"{run}-dead-letters",
        "DMEDIAN_NUMBERS_PARTITIONS": "4",
    }


def _run(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    tmp.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "DMEDIAN_DATA_DIR": str(tmp / "data"), "DMEDIAN_WEB_PORT": str(free_port()), **env}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env=full_env, cwd=REPO, capture_output=True, text=True, timeout=_END_WITHIN_S, check=False,
    )  # fmt: skip


def _assert_fails_clearly(result: subprocess.CompletedProcess[str], situation: Situation) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert result.returncode == situation.code, output
    for needle in situation.says:
        assert needle in errors[0], output
    # Nothing else on stderr: no librdkafka lines, no log records, no wrapped continuation.
    assert [line for line in result.stderr.splitlines() if line.strip()] == errors, output


@pytest.fixture(scope="module")
def stopped() -> Situation:
    # Nothing listens on port 1 (privileged, unused): the same as a stopped broker.
    env = _names("stopped", "127.0.0.1:1", _DEAD_WAIT_MS)
    return Situation(env, ExitCode.UNREACHABLE, ("127.0.0.1:1", "did not answer within 3 s", "KAFKA_BOOTSTRAP_SERVERS"))


@pytest.fixture(scope="module")
def missing(kafka: BrokerHandle) -> Situation:
    env = _names("missing", kafka.bootstrap)
    return Situation(env, ExitCode.TOPIC_MISSING, ("dmedian topics create",))


@pytest.fixture(scope="module")
def mismatched(kafka: BrokerHandle) -> Situation:
    """Every topic exists with a partition count its settings contradict."""
    env = _names("mismatch", kafka.bootstrap)
    topics = topic_set(load_settings(environ=env))
    wrong = {topics.numbers.name: 2, topics.shard_changelog.name: 2, topics.sketches.name: 3,
             topics.medians.name: 3, topics.dead_letters.name: 1}  # fmt: skip
    admin = admin_client(load_settings(environ=env))
    futures = admin.create_topics([NewTopic(name, num_partitions=n, replication_factor=1) for name, n in wrong.items()])
    for future in futures.values():
        future.result(timeout=60)
    return Situation(env, ExitCode.SETTINGS, ("partitions",))


@pytest.fixture(scope="module")
def empty(kafka: BrokerHandle) -> Situation:
    env = _names("empty", kafka.bootstrap)
    settings = load_settings(environ=env)
    create_topics(admin_client(settings), topic_set(settings))
    return Situation(env, ExitCode.EMPTY, ("no ",))


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_stopped_broker(command: str, stopped: Situation, tmp_path: Path) -> None:
    _assert_fails_clearly(_run(COMMANDS[command], stopped.env, tmp_path), stopped)


@pytest.mark.parametrize("command", MISSING)
def test_a_missing_topic(command: str, missing: Situation, tmp_path: Path) -> None:
    result = _run(COMMANDS[command], missing.env, tmp_path)
    _assert_fails_clearly(result, missing)
    # The line names the topic, or every missing one.
    assert missing.env["DMEDIAN_APP_ID"].removesuffix("-app") in result.stderr


@pytest.mark.parametrize("command", MISMATCH)
def test_a_partition_count_mismatch(command: str, mismatched: Situation, tmp_path: Path) -> None:
    _assert_fails_clearly(_run(COMMANDS[command], mismatched.env, tmp_path), mismatched)


@pytest.mark.parametrize("command", EMPTY)
def test_an_empty_topic(command: str, empty: Situation, tmp_path: Path) -> None:
    _assert_fails_clearly(_run(COMMANDS[command], empty.env, tmp_path), empty)


def test_verbose_shows_the_traceback_too(missing: Situation, tmp_path: Path) -> None:
    result = _run(["--verbose", *COMMANDS["shards"]], missing.env, tmp_path)
    assert result.returncode == ExitCode.TOPIC_MISSING, result.stderr
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: topic ")


def test_a_record_of_an_unknown_version_is_named(empty: Situation, tmp_path: Path) -> None:
    settings = load_settings(environ=empty.env)
    client = producer(settings)
    client.produce(settings.topic_medians, key=b"global", value=b'{"v": 99, "n": 1}')
    assert client.flush(30) == 0
    result = _run(["watch", "--from-beginning", "--timeout", "30"], empty.env, tmp_path)
    _assert_fails_clearly(result, Situation(empty.env, ExitCode.UNKNOWN_VERSION, ("99", "newer dmedian")))


def test_a_refused_handshake_names_the_security_settings(kafka: BrokerHandle, tmp_path: Path) -> None:
    # TLS spoken to a plaintext listener: the broker refuses the handshake, as it would a bad certificate.
    env = {**_names("tls", kafka.bootstrap, _DEAD_WAIT_MS), "DMEDIAN_KAFKA_SECURITY_PROTOCOL": "SSL"}
    situation = Situation(env, ExitCode.AUTHENTICATION, ("refused the connection", "DMEDIAN_KAFKA_SECURITY_PROTOCOL"))
    _assert_fails_clearly(_run(COMMANDS["shards"], env, tmp_path), situation)


@pytest.fixture
def own_broker() -> Iterator[LocalBroker]:
    """A local broker of this test's own, to kill under running commands (the session's stays up)."""
    with _local() as handle:
        assert handle.local is not None
        yield handle.local


def _wait_until_delivered(settings: Settings, timeout_s: float = 60.0) -> None:
    client = consumer(settings, f"probe-{uuid.uuid4().hex[:8]}")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            partitions = range(settings.numbers_partitions)
            if sum(watermarks(client, TopicPartition(settings.topic_numbers, p))[1] for p in partitions) > 0:
                return
            time.sleep(0.2)
    finally:
        client.close()
    raise AssertionError(f"nothing delivered to {settings.topic_numbers} within {timeout_s} s")


def test_commands_running_when_their_broker_dies_end_and_say_so(own_broker: LocalBroker, tmp_path: Path) -> None:
    env = _names("dies", own_broker.bootstrap, 5000)
    settings = load_settings(environ=env)
    create_topics(admin_client(settings), topic_set(settings))
    full_env = {**os.environ, "DMEDIAN_DATA_DIR": str(tmp_path / "data"), **env}
    commands = {
        # 200 messages/s for 60 s, and a watcher with no timeout: the broker dies once some were delivered.
        "produce": ["produce", "--count", "12000", "--rate", "200"],
        "watch": ["watch", "--json"],
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            env=full_env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    outputs = {}
    try:
        _wait_until_delivered(settings)  # the producer has delivered some: now the broker dies
        own_broker.kill()
        for name, process in processes.items():
            outputs[name] = process.communicate(timeout=_END_WITHIN_S)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
    for name, process in processes.items():
        stdout, stderr = outputs[name]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert process.returncode == ExitCode.UNREACHABLE, name + stdout + stderr
        assert "Traceback" not in stdout + stderr
        assert len(errors) == 1, stderr
        assert f"Kafka at {own_broker.bootstrap} did not answer within 5 s" in errors[0], stderr
    produced = next(line for line in outputs["produce"][1].splitlines() if line.startswith("error:"))
    assert " of 12,000 messages delivered, " in produced, produced
    delivered = int(produced.split("error: ", 1)[1].split(" of ", 1)[0].replace(",", ""))
    assert 0 < delivered < 12_000, produced
