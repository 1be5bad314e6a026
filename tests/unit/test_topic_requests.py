"""Topic creation requests stay under the broker's cap, which counts every topic of a request together."""

from __future__ import annotations

from topics.admin import creation_requests
from topics.specs import TopicSpec


def _specs(*partitions: int) -> list[TopicSpec]:
    return [TopicSpec(f"t{i}", count, 1) for i, count in enumerate(partitions)]


def test_two_topics_of_ten_thousand_go_in_separate_requests() -> None:
    groups = creation_requests(_specs(10_000, 1, 1, 1, 10_000), 5000)
    assert [[spec.name for spec in group] for group in groups] == [["t0"], ["t1", "t2", "t3"], ["t4"]]


def test_small_topics_share_one_request() -> None:
    groups = creation_requests(_specs(8, 1, 1, 1, 8), 5000)
    assert [[spec.name for spec in group] for group in groups] == [["t0", "t1", "t2", "t3", "t4"]]


def test_every_request_asks_for_at_most_the_step() -> None:
    specs = _specs(3, 2, 7, 1, 1, 4, 9)
    groups = creation_requests(specs, 4)
    assert [spec for group in groups for spec in group] == specs
    for group in groups:
        assert sum(min(spec.partitions, 4) for spec in group) <= 4
