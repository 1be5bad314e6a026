"""Reading the output topics: the latest global record, and the latest snapshot per shard."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from config import Settings
from pipeline.core.wire import MedianRecord, SketchSnapshot
from pipeline.errors import UnknownRecordVersionError, from_kafka
from pipeline.kafka.clients import consumer, watermarks
from pipeline.kafka.sketches_log import read_sketches_log

__all__ = ["follow_medians", "latest_snapshots", "wait_for_record"]

logger = logging.getLogger(__name__)

_PROBE_AFTER_S = 5.0
"""A strict follower that heard nothing for this long asks for metadata: a consumer of an idle
partition does not tell that every broker went away, it just keeps returning nothing."""


def follow_medians(
    settings: Settings, from_beginning: bool = False, poll_s: float = 0.5, *, strict: bool = False
) -> Iterator[MedianRecord | None]:
    """Yield each new ``medians`` record as it arrives; yield None on every idle poll.

    With ``from_beginning`` false it starts at the last record already there, so a
    watcher sees the current estimate at once. A worker's follower rides out broker
    restarts and skips records it cannot read; a command's (``strict``) raises the
    operator's error instead: Kafka silent for ``kafka_timeout_ms``, or a record of
    a version this code does not read.
    """
    client = consumer(settings, f"dmedian-follow-{uuid.uuid4().hex[:8]}", enable_partition_eof=False)
    try:
        tp = TopicPartition(settings.topic_medians, 0, OFFSET_BEGINNING)
        if not from_beginning:
            low, high = watermarks(client, tp, settings.kafka_timeout_s)
            tp.offset = max(low, high - 1) if high > low else OFFSET_END
        client.assign([tp])
        heard = time.monotonic()
        while True:
            message = client.poll(poll_s)
            if message is None:
                if strict and time.monotonic() - heard > _PROBE_AFTER_S:
                    _probe(client, settings)
                    heard = time.monotonic()
                yield None
                continue
            heard = time.monotonic()
            error = message.error()
            if error is not None:
                logger.warning("medians: %s", error)
                continue
            value = message.value()
            if value is None:
                continue
            try:
                yield MedianRecord.from_json(value)
            except (ValueError, KeyError) as exc:
                if strict and "version" in str(exc):
                    raise UnknownRecordVersionError(
                        f"the record at offset {message.offset()} of {settings.topic_medians!r} is unreadable: {exc}; "
                        "it was written by a newer dmedian: upgrade this one"
                    ) from exc
                logger.warning("skipping unreadable medians record at offset %d: %s", message.offset(), exc)
    finally:
        client.close()


def _probe(client: Consumer, settings: Settings) -> None:
    """Return when a broker answers within ``kafka_timeout_ms``; raise the operator's error otherwise."""
    try:
        client.list_topics(timeout=settings.kafka_timeout_s)  # all topics: asking for one could auto-create it
    except KafkaException as exc:
        raise from_kafka(exc, settings, f"following {settings.topic_medians}") from None


def wait_for_record(
    settings: Settings,
    done: Callable[[MedianRecord], bool],
    timeout_s: float,
    give_up: Callable[[], bool] = lambda: False,
) -> MedianRecord | None:
    """The first record (at or after the latest) for which ``done`` holds.

    Returns the last record seen when ``timeout_s`` passes or ``give_up()`` turns
    true (say, the worker died), so the caller can report how far it got.
    """
    deadline = time.monotonic() + timeout_s
    last: MedianRecord | None = None
    for record in follow_medians(settings):
        if record is not None:
            last = record
            if done(record):
                return record
        if time.monotonic() > deadline or give_up():
            return last
    return last


def latest_snapshots(settings: Settings, timeout_s: float | None = None) -> dict[int, SketchSnapshot]:
    """Read ``sketches`` to its end and return the latest snapshot of every shard."""
    return read_sketches_log(settings, timeout_s or settings.kafka_timeout_s).snapshots
