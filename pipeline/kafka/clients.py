"""confluent-kafka client configurations built from settings.

Every client (admin, producers, consumers) gets the same bootstrap servers and
security settings, so a secured cluster needs the settings once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from config import Settings

__all__ = ["admin_client", "client_config", "consumer", "producer", "retrying", "watermarks"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors a partition shows for a moment after its topic is created, and a group's
# coordinator while it loads or moves.
_SETTLING = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
)


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection and security options shared by every client."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
        # librdkafka logs transient, retried conditions (queue purges at close, a
        # coordinator still loading on a fresh broker) that alarm CLI users; errors
        # still show, and a failed delivery is raised by the producer regardless.
        "log_level": 3,
    }
    if settings.kafka_sasl_mechanism:
        config.update(
            {
                "sasl.mechanism": settings.kafka_sasl_mechanism,
                "sasl.username": settings.kafka_sasl_username,
                "sasl.password": settings.kafka_sasl_password,
            }
        )
    if settings.kafka_ssl_cafile:
        config["ssl.ca.location"] = settings.kafka_ssl_cafile
    return config


def admin_client(settings: Settings) -> AdminClient:
    """An admin client for topic management."""
    return AdminClient(client_config(settings))


def producer(settings: Settings, **overrides: Any) -> Producer:
    """A producer tuned for throughput: batches up to 1 MiB, lingers 5 ms, lz4."""
    config = client_config(settings) | {
        "linger.ms": 5,
        "batch.size": 1024 * 1024,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "enable.idempotence": True,
    }
    config.update({key.replace("_", "."): value for key, value in overrides.items()})
    return Producer(config)


def consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    """A consumer that reads from the beginning and never commits (tools only read)."""
    config = client_config(settings) | {
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    }
    config.update({key.replace("_", "."): value for key, value in overrides.items()})
    return Consumer(config)


def retrying(call: Callable[[], T], timeout_s: float = 30.0) -> T:
    """``call()``, retried while the cluster settles: a just-created topic's leader,
    a new group's coordinator loading or moving. Other errors raise at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (error.retriable() or error.code() in _SETTLING)
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def watermarks(client: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> tuple[int, int]:
    """Low and high watermarks, retrying while a just-created topic's leader settles."""
    low, high = retrying(lambda: client.get_watermark_offsets(tp, timeout=10), timeout_s)
    return int(low), int(high)
