"""Producing numbers to the input topic with confluent-kafka."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaError, Producer

from config import Settings
from pipeline.errors import OperatorError, from_kafka

__all__ = ["ProduceError", "produce_values"]

logger = logging.getLogger(__name__)


_ANY_PARTITION = -1
"""librdkafka's 'unassigned' partition: let the configured partitioner choose."""


class ProduceError(OperatorError):
    """Messages were not delivered; says how many were and were not."""

    def __init__(self, sent: int, delivered: int, cause: KafkaError | str) -> None:
        self.sent = sent
        """Messages to send (handed to the producer or not, when the count was known)."""
        self.delivered = delivered
        """Messages the broker acknowledged."""
        self.cause = cause
        """The first delivery error, or why the wait ended."""
        super().__init__(f"{self.counts}: {cause.str() if isinstance(cause, KafkaError) else cause}")

    @property
    def counts(self) -> str:
        """``"D of S messages delivered, U not"``."""
        return f"{self.delivered:,} of {self.sent:,} messages delivered, {self.sent - self.delivered:,} not"

    def for_operator(self, settings: Settings) -> OperatorError:
        """The error with its cause named as for every command (unreachable, refused, missing), and the counts."""
        if not isinstance(self.cause, KafkaError):
            return self
        named = from_kafka(self.cause, settings, "delivering messages")
        return type(named)(f"{self.counts}; {named}")


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
    total: int | None = None,
) -> int:
    """Send every value, at most ``rate`` messages/s when ``rate`` > 0; return the count.

    ``key`` and ``partition`` map the message's 1-based sequence number to its key
    and partition; by default the producer's partitioner spreads keyless messages.

    Waits until every message is acknowledged, and raises :class:`ProduceError`
    (with how many were delivered) if any delivery failed: a producer tool that
    silently drops input would be the worst kind of bug for a tool whose answers
    are audited. A producer made with ``message.timeout.ms`` fails its messages
    after that long without a broker, so neither sending nor the final wait hangs;
    the final wait is also cut at ``timeout_s``. After a permanent failure it stops
    sending; with ``total`` (the messages in ``values``) the error counts the ones
    never sent as not delivered.
    """
    failures: list[KafkaError] = []
    delivered = 0

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
        else:
            failures.append(err)

    started = time.monotonic()
    sent = 0
    for sent, value in enumerate(values, start=1):
        target = partition(sent) if partition else _ANY_PARTITION
        message_key = key(sent) if key else None
        while True:
            try:
                producer.produce(topic, value=value, key=message_key, partition=target, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries (or their timeouts) drain it
        producer.poll(0)
        if on_progress is not None and sent % 1000 == 0:
            on_progress(1000)
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        if failures and not failures[0].retriable():
            break  # a permanent failure (no such topic, too large): the rest would fail alike
    if on_progress is not None:
        on_progress(sent % 1000)
    remaining = producer.flush(timeout_s)
    if failures:
        raise ProduceError(max(sent, total or 0), delivered, failures[0])
    if remaining:
        raise ProduceError(max(sent, total or 0), delivered, f"{remaining:,} unacknowledged after {timeout_s:.0f} s")
    return sent
