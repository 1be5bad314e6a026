"""Topic creation against a real broker: idempotent, and loud on a conflicting spec."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from config import load_settings
from pipeline.kafka.clients import admin_client
from tests.broker_fixture import BrokerHandle
from tests.integration.harness import REPO
from topics import topic_set
from topics.admin import TopicConflictError, create_topics, describe_topics

pytestmark = pytest.mark.integration


def _env(kafka: BrokerHandle) -> dict[str, str]:
    run = uuid.uuid4().hex[:10]
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "DMEDIAN_TOPIC_NUMBERS": f"t-{run}-numbers",
        "DMEDIAN_TOPIC_SKETCHES": f"t-{run}-sketches",
        "DMEDIAN_TOPIC_MEDIANS": f"t-{run}-medians",
        "DMEDIAN_TOPIC_DEAD_LETTERS": f"t-{run}-dead-letters",
        "DMEDIAN_NUMBERS_PARTITIONS": "3",
    }


def test_create_is_idempotent_and_matches_the_specs(kafka: BrokerHandle) -> None:
    settings = load_settings(environ=_env(kafka))
    admin = admin_client(settings)
    specs = topic_set(settings)

    assert sorted(create_topics(admin, specs)) == sorted(spec.name for spec in specs)
    assert create_topics(admin, specs) == []

    states = {state.spec.name: state for state in describe_topics(admin, specs)}
    assert all(state.exists and not state.conflicts for state in states.values())
    assert states[settings.topic_numbers].partitions == 3
    assert states[settings.topic_sketches].config["cleanup.policy"] == "compact"
    assert states[settings.topic_medians].partitions == 1
    assert states[settings.topic_numbers].config["segment.index.bytes"] == str(128 * 1024)


def test_an_existing_topic_with_another_partition_count_is_refused_not_changed(kafka: BrokerHandle) -> None:
    env = _env(kafka)
    settings = load_settings(environ=env)
    admin = admin_client(settings)
    admin.create_topics([NewTopic(settings.topic_numbers, num_partitions=5, replication_factor=1)])[
        settings.topic_numbers
    ].result(timeout=30)

    with pytest.raises(TopicConflictError, match="partitions: spec 3, cluster 5"):
        create_topics(admin, topic_set(settings))

    cli = subprocess.run(
        [sys.executable, "-m", "pipeline", "topics", "create"],
        env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cli.returncode == 2
    assert settings.topic_numbers in cli.stderr
    assert "partitions: spec 3, cluster 5" in cli.stderr
    state = describe_topics(admin, [topic_set(settings).numbers])[0]
    assert state.partitions == 5


def test_an_existing_topic_without_the_tuning_configs_is_kept_and_described_as_slower(kafka: BrokerHandle) -> None:
    env = _env(kafka)
    settings = load_settings(environ=env)
    admin = admin_client(settings)
    numbers = topic_set(settings).numbers
    admin.create_topics([NewTopic(numbers.name, num_partitions=3, replication_factor=1, config=dict(numbers.config))])[
        numbers.name
    ].result(timeout=30)

    create_topics(admin, topic_set(settings))  # no conflict: the tuning is not required

    state = describe_topics(admin, [numbers])[0]
    assert state.conflicts == []
    assert [line.split(":")[0] for line in state.untuned] == ["segment.index.bytes", "index.interval.bytes"]
    cli = subprocess.run(
        [sys.executable, "-m", "pipeline", "topics", "describe"],
        env={**os.environ, **env, "COLUMNS": "400"}, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "slower: segment.index.bytes" in cli.stdout


def test_a_bad_setting_stops_the_cli_with_a_message_naming_it(kafka: BrokerHandle) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "pipeline", "topics", "create"],
        env={**os.environ, **_env(kafka), "DMEDIAN_SKETCH_K": "three"},
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cli.returncode == 2
    assert "DMEDIAN_SKETCH_K" in cli.stderr
    assert "'three'" in cli.stderr
