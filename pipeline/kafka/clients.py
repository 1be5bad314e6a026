"""confluent-kafka client configurations built from settings.

Every client (admin, producers, consumers) gets the same bootstrap servers and
security settings, so a secured cluster needs the settings once.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from config import Settings

__all__ = ["admin_client", "client_config", "consumer", "producer"]

logger = logging.getLogger(__name__)


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
