"""Producing numbers to the input topic with confluent-kafka."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Producer

__all__ = ["ProduceError", "produce_values"]

logger = logging.getLogger(__name__)


_ANY_PARTITION = -1
"""librdkafka's 'unassigned' partition: let the configured partitioner choose."""


class ProduceError(RuntimeError):
    """A message could not be delivered."""


def produce_values(
    producer: Producer,
    topic: str,
    values: Iterable[bytes],
    *,
    rate: float = 0.0,
    key: Callable[[int], bytes | None] | None = None,
    partition: Callable[[int], int] | None = None,
    on_progress: Callable[[int], None] | None = None,
    timeout_s: float = 120.0,
) -> int:
    """Send every value, at most ``rate`` messages/s when ``rate`` > 0; return the count.

    ``key`` and ``partition`` map the message's 1-based sequence number to its key
    and partition; by default the producer's partitioner spreads keyless messages.

    Waits until every message is acknowledged, and raises :class:`ProduceError`
    if any delivery failed: a producer tool that silently drops input would be
    the worst kind of bug for a tool whose answers are audited.
    """
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    started = time.monotonic()
    sent = 0
    for sent, value in enumerate(values, start=1):
        target = partition(sent) if partition else _ANY_PARTITION
        message_key = key(sent) if key else None
        while True:
            try:
                producer.produce(topic, value=value, key=message_key, partition=target, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it
        producer.poll(0)
        if on_progress is not None and sent % 1000 == 0:
            on_progress(1000)
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    if on_progress is not None:
        on_progress(sent % 1000)
    remaining = producer.flush(timeout_s)
    if remaining:
        raise ProduceError(f"{remaining} messages were not delivered within {timeout_s:.0f} s")
    if failures:
        raise ProduceError(f"{len(failures)} messages failed, first: {failures[0]}")
    return sent
