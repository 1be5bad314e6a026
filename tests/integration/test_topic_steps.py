"""Topics larger than one request: created and grown in steps, saying so (a broker caps a request at 10,000)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from config import load_settings
from pipeline.kafka.clients import admin_client
from tests.broker_fixture import BrokerHandle
from tests.integration.harness import REPO
from topics import topic_set
from topics.admin import describe_topics

pytestmark = pytest.mark.integration


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_create_and_grow_step_by_step_on_a_real_broker(kafka: BrokerHandle) -> None:
    run = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "DMEDIAN_APP_ID": f"steps-{run}",
        "DMEDIAN_TOPIC_NUMBERS": f"steps-{run}-numbers",
        "DMEDIAN_TOPIC_SKETCHES": f"steps-{run}-sketches",
        "DMEDIAN_TOPIC_MEDIANS": f"steps-{run}-medians",
        "DMEDIAN_TOPIC_DEAD_LETTERS": f"steps-{run}-dead-letters",
        "DMEDIAN_NUMBERS_PARTITIONS": "10",
    }
    settings = load_settings(environ=env)
    topics = topic_set(settings)

    created = _cli(env, "topics", "create", "--partitions-per-request", "3")
    assert created.returncode == 0, created.stderr
    # 10 partitions at most 3 a request: created with 3, then 3 -> 6 -> 9 -> 10, for both shard topics.
    for name in (topics.numbers.name, topics.shard_changelog.name):
        assert f"creating topic {name} with 3 partitions of 10" in created.stderr
        for step in ("3 -> 6", "6 -> 9", "9 -> 10"):
            assert f"{name}: {step} of 10 partitions" in created.stderr, created.stderr
    assert f"creating topic {topics.sketches.name} with 1 partition\n" in created.stderr
    states = {s.spec.name: s for s in describe_topics(admin_client(settings), topics)}
    assert all(s.exists and not s.conflicts for s in states.values()), states
    assert states[topics.numbers.name].partitions == 10
    assert states[topics.shard_changelog.name].partitions == 10

    grown = _cli(env, "topics", "grow", "--partitions", "17", "--partitions-per-request", "4")
    assert grown.returncode == 0, grown.stderr
    for name in (topics.numbers.name, topics.shard_changelog.name):
        for step in ("10 -> 14", "14 -> 17"):
            assert f"{name}: {step} of 17 partitions" in grown.stderr, grown.stderr
    counts = {s.spec.name: s.partitions for s in describe_topics(admin_client(settings), topics)}
    assert counts[topics.numbers.name] == counts[topics.shard_changelog.name] == 17
