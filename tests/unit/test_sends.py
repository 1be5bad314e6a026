"""DirectTopic: a send on a started producer makes no pass of the event loop; otherwise Faust's path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Generator
from typing import Any

import faust
import pytest

from pipeline.transport.sends import DirectTopic


class _Producer:
    """Stands in for Faust's producer object: records what it is asked to send (no Kafka involved)."""

    def __init__(self, started: bool) -> None:
        self.started = started
        self.starts = 0
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    async def maybe_start(self) -> None:
        if not self.started:
            self.starts += 1
            self.started = True

    async def send(self, topic: str, key: bytes | None, value: bytes | None, **_options: Any) -> asyncio.Future[Any]:
        self.sent.append((topic, key, value))
        return asyncio.get_running_loop().create_future()  # delivery is not this test's business


class _Passes:
    """Awaits an awaitable and counts the times it handed the event loop back."""

    def __init__(self, awaitable: Awaitable[Any]) -> None:
        self._awaitable = awaitable
        self.count = 0

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self._awaitable.__await__()
        try:
            step = inner.send(None)
            while True:
                self.count += 1
                step = inner.send((yield step))
        except StopIteration as stop:
            return stop.value


def _passes_of_one_send(topic_class: type[faust.Topic], producer: _Producer) -> int:
    app = faust.App("sends-test", autodiscover=False, Topic=topic_class)
    app.producer = producer  # type: ignore[assignment]
    topic = app.topic("sketches", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    async def send() -> int:
        passes = _Passes(topic.send(key=b"k", value=b"v"))
        await passes
        return passes.count

    return asyncio.run(send())


def test_the_app_builds_its_topics_and_changelogs_as_direct_topics() -> None:
    app = faust.App("sends-test", autodiscover=False, Topic=DirectTopic)
    table = app.Table("t", partitions=4)
    assert isinstance(app.topic("x"), DirectTopic)
    assert isinstance(table.changelog_topic, DirectTopic)


def test_a_send_on_a_started_producer_never_hands_the_loop_back() -> None:
    producer = _Producer(started=True)
    assert _passes_of_one_send(DirectTopic, producer) == 0
    assert producer.sent == [("sketches", b"k", b"v")]


def test_faust_s_own_topic_makes_passes_of_the_loop_per_send() -> None:
    # Why DirectTopic exists: should Faust drop the per-send producer check, this fails and it can go.
    producer = _Producer(started=True)
    assert _passes_of_one_send(faust.Topic, producer) >= 3
    assert producer.sent == [("sketches", b"k", b"v")]


@pytest.mark.parametrize("topic_class", [DirectTopic, faust.Topic])
def test_a_producer_not_started_is_started_first(topic_class: type[faust.Topic]) -> None:
    producer = _Producer(started=False)
    _passes_of_one_send(topic_class, producer)
    assert producer.starts == 1
    assert producer.sent == [("sketches", b"k", b"v")]
