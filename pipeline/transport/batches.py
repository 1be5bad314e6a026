"""What batch delivery hands an agent, and what an app declares for it.

:class:`RawBatch` is the value of a batch event; :class:`RawBatchSchema` passes it
through Faust undecoded. An app declares its batch-delivered topics
(:func:`batch_topic`, :func:`deliver_in_batches`), optionally where its own state
says a partition must resume (:func:`resume_from_state`), and whether librdkafka
fetches its batch topics (:func:`fetch_with_librdkafka`); all ride on the app
object, read by :class:`pipeline.transport.batching.BatchConsumer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import AppT, TopicT
from faust.types.tuples import TP, Message

__all__ = [
    "SCHEME",
    "NewConsumer",
    "RawBatch",
    "RawBatchSchema",
    "ResumeOffsets",
    "batch_topic",
    "batch_topics",
    "deliver_in_batches",
    "fetch_with_librdkafka",
    "librdkafka_consumer",
    "resume_from_state",
    "resume_offsets",
]

logger = logging.getLogger(__name__)

SCHEME = "dmkafka"
"""Broker URL scheme of the batch transport (``dmkafka://host:port``)."""

# Faust's Settings silently drops unknown keys, so the batch-delivered topic names
# ride on the app object itself: no registry outside the app, nothing to clean up.
_APP_ATTRIBUTE = "_dmedian_batch_topics"
_RESUME_ATTRIBUTE = "_dmedian_resume_offsets"
_LIBRDKAFKA_ATTRIBUTE = "_dmedian_librdkafka_consumer"

NewConsumer = Callable[[dict[str, Any]], Any]
"""Makes a ``confluent_kafka.Consumer`` with these options over the app's connection and security ones."""

ResumeOffsets = Callable[[TP], int | None]
"""Where the app's own state says a partition's reading must resume (None: it has no say)."""


@dataclass(frozen=True, slots=True)
class RawBatch:
    """The records of one partition from one fetch, in offset order: an event's value."""

    offsets: list[int]
    """Source offset of each record (strictly increasing)."""
    keys: list[bytes | None]
    """Undecoded key of each record."""
    values: list[bytes | None]
    """Undecoded value of each record."""

    def __len__(self) -> int:
        return len(self.offsets)


class RawBatchSchema(faust.Schema[bytes | None, RawBatch]):
    """Schema of a batch-delivered topic: hands the :class:`RawBatch` over undecoded.

    A plain record on such a topic means the app does not use :class:`BatchTransport`;
    that raises TypeError (the worker crashes) rather than dropping data as a decode error.
    """

    def __init__(self) -> None:
        # Raw codecs, so that sending plain bytes to the topic still works. A value type
        # of its own keeps the conductor from sharing RawBatch events with a plain
        # bytes channel on the same topic (it reuses events per (key, value) type).
        super().__init__(
            key_type=bytes,
            value_type=RawBatch,  # type: ignore[arg-type]  # Faust's stubs list only models, bytes, str
            key_serializer="raw",
            value_serializer="raw",
        )

    # Faust's signatures, so the unused parameters stay.
    def loads_key(self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None) -> bytes | None:  # noqa: ARG002
        return message.key

    def loads_value(self, app: AppT, message: Message, *, loads: Any = None, serializer: Any = None) -> RawBatch:  # noqa: ARG002
        value: object = message.value  # typed bytes by Faust; a RawBatch here
        if not isinstance(value, RawBatch):
            raise TypeError(f"{message.topic}: expected a RawBatch (is the broker URL {SCHEME}://?), got {value!r:.60}")
        return value


def deliver_in_batches(app: AppT, topics: Iterable[str]) -> None:
    """Declare ``topics`` batch-delivered for ``app`` (adds to any declared before)."""
    setattr(app, _APP_ATTRIBUTE, batch_topics(app) | frozenset(topics))


def batch_topics(app: AppT) -> frozenset[str]:
    """The topic names ``app`` declared batch-delivered."""
    topics: frozenset[str] = getattr(app, _APP_ATTRIBUTE, frozenset())
    return topics


def resume_from_state(app: AppT, offsets: ResumeOffsets) -> None:
    """After each assignment, start batch partitions at ``offsets(tp)`` (None: the committed offset)."""
    setattr(app, _RESUME_ATTRIBUTE, offsets)


def resume_offsets(app: AppT) -> ResumeOffsets | None:
    """The resume callback ``app`` declared, if any."""
    offsets: ResumeOffsets | None = getattr(app, _RESUME_ATTRIBUTE, None)
    return offsets


def fetch_with_librdkafka(app: AppT, new_consumer: NewConsumer) -> None:
    """Fetch ``app``'s batch topics with librdkafka, with a client ``new_consumer`` makes."""
    setattr(app, _LIBRDKAFKA_ATTRIBUTE, new_consumer)


def librdkafka_consumer(app: AppT) -> NewConsumer | None:
    """What makes the librdkafka client :func:`fetch_with_librdkafka` gave ``app`` (None: aiokafka fetches)."""
    new_consumer: NewConsumer | None = getattr(app, _LIBRDKAFKA_ATTRIBUTE, None)
    return new_consumer


def batch_topic(app: AppT, name: str, **options: Any) -> TopicT:
    """Declare ``name`` batch-delivered and return its topic (``options`` go to ``app.topic``)."""
    deliver_in_batches(app, [name])
    return app.topic(name, schema=RawBatchSchema(), **options)
