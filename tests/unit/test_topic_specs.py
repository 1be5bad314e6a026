"""The declared topics follow the settings; sketches and medians have fixed shapes."""

from __future__ import annotations

import dataclasses

import pytest

from config import load_settings
from topics import TopicSet, TopicSpec, topic_set

DEFAULTS = topic_set(load_settings(environ={}))


def test_sketches_is_compacted_with_one_partition() -> None:
    assert DEFAULTS.sketches.partitions == 1
    assert DEFAULTS.sketches.config["cleanup.policy"] == "compact"


def test_medians_has_one_partition_and_is_not_compacted() -> None:
    assert DEFAULTS.medians.partitions == 1
    assert DEFAULTS.medians.config["cleanup.policy"] == "delete"


def test_dead_letters_keeps_rejected_input_longer_than_numbers_by_default() -> None:
    assert DEFAULTS.dead_letters.config["cleanup.policy"] == "delete"
    assert int(DEFAULTS.dead_letters.config["retention.ms"]) > int(DEFAULTS.numbers.config["retention.ms"])


def test_topics_with_a_partition_per_shard_keep_small_index_files_that_still_cover_a_large_segment() -> None:
    for spec in (DEFAULTS.numbers, DEFAULTS.shard_changelog):
        index_bytes = int(spec.tuning["segment.index.bytes"])
        interval = int(spec.tuning["index.interval.bytes"])
        assert spec.creation_config["segment.index.bytes"] == spec.tuning["segment.index.bytes"]
        # A first touch of a mapped index page reads around it and zeroes the holes: the file's size bounds that.
        assert index_bytes <= 128 * 1024
        # Kafka rolls a segment when an index is full; the time index's entries are 12 bytes.
        assert (index_bytes // 12) * interval >= 512 * 1024 * 1024


@pytest.mark.parametrize("partitions", [1, 3, 64])
def test_numbers_partitions_follow_settings_and_others_stay_at_one(partitions: int) -> None:
    topics = topic_set(load_settings({"numbers_partitions": partitions}, environ={}))
    assert topics.numbers.partitions == partitions
    assert (topics.sketches.partitions, topics.medians.partitions, topics.dead_letters.partitions) == (1, 1, 1)


def test_names_replication_and_retention_follow_settings() -> None:
    settings = load_settings(
        {
            "topic_numbers": "in",
            "topic_sketches": "sk",
            "topic_medians": "out",
            "topic_dead_letters": "dlq",
            "replication_factor": 3,
            "numbers_retention_ms": -1,
        },
        environ={},
    )
    topics = topic_set(settings)
    assert [spec.name for spec in topics] == [
        "in", "sk", "out", "dlq", "dmedian-shard-sketches-changelog",
    ]  # fmt: skip
    assert {spec.replication_factor for spec in topics} == {3}
    assert topics.numbers.config["retention.ms"] == "-1"


def test_default_topic_names_come_from_settings() -> None:
    assert [spec.name for spec in DEFAULTS][:4] == ["numbers", "sketches", "medians", "dead-letters"]
    assert isinstance(DEFAULTS, TopicSet)


def test_topic_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.numbers.partitions = 99  # type: ignore[misc]
    with pytest.raises(TypeError):
        DEFAULTS.sketches.config["cleanup.policy"] = "delete"  # type: ignore[index]
    assert DEFAULTS.sketches.config["cleanup.policy"] == "compact"


def test_topic_spec_config_defaults_to_empty_and_specs_compare_by_value() -> None:
    assert dict(TopicSpec("t", 1, 1).config) == {}
    assert TopicSpec("t", 2, 1) == TopicSpec("t", 2, 1)
    assert TopicSpec("t", 2, 1) != TopicSpec("t", 3, 1)


def test_changelogs_are_compacted_and_co_partitioned_with_their_sources() -> None:
    topics = topic_set(load_settings({"numbers_partitions": 12, "app_id": "prod"}, environ={}))
    assert topics.shard_changelog.name == "prod-shard-sketches-changelog"
    assert topics.shard_changelog.partitions == topics.numbers.partitions == 12
    assert topics.sketches.partitions == 1
    # ``sketches`` itself is the aggregator's changelog: compacted, keyed by shard.
    assert topics.shard_changelog.config["cleanup.policy"] == topics.sketches.config["cleanup.policy"] == "compact"
