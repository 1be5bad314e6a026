"""confluent-kafka client configurations built from settings.

Every client (admin, producers, consumers) gets the same bootstrap servers and
security settings, so a secured cluster needs the settings once, and sends
librdkafka's own log lines through Python logging (``pipeline.kafka.rdkafka``)
instead of raw to stderr.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from config import Settings
from pipeline.errors import PartitionMismatchError, TopicMissingError, from_kafka, note_client_failure
from topics import TopicSpec, topic_set
from topics.admin import partition_counts
from topics.growth import fewer_partitions_message

__all__ = [
    "RDKAFKA_LOGGER",
    "admin_client",
    "client_config",
    "cluster_partitions_map",
    "consumer",
    "producer",
    "require_topics",
    "retrying",
    "watermarks",
]

logger = logging.getLogger(__name__)

RDKAFKA_LOGGER = logging.getLogger("pipeline.kafka.rdkafka")
"""Where librdkafka's own log lines go."""

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

# A broker that is down, restarting or refusing the handshake: librdkafka retries it
# by itself and logs every attempt at ERROR. Our commands report the condition once,
# naming the setting (pipeline/errors.py), so these lines are DEBUG (`--verbose`).
_CONNECTION_TROUBLE = re.compile(
    r"Connect to .* failed|Connection refused|brokers are down|Disconnected|handshake failed|"
    r"SSL|SASL|[Aa]uthenticat|timed out|Failed to resolve|Receive failed|Send failed",
    re.ASCII,
)


class _RdkafkaLog:
    """librdkafka's log callback (``logger`` in a client's config): Python logging, at a level we choose."""

    def log(self, level: int, fmt: str, *args: object) -> None:
        message = fmt % args if args else fmt
        if _CONNECTION_TROUBLE.search(message):
            note_client_failure(message)
            level = logging.DEBUG
        RDKAFKA_LOGGER.log(level, "%s", message)


def client_config(settings: Settings) -> dict[str, Any]:
    """Connection and security options shared by every client."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
        # librdkafka logs transient, retried conditions (queue purges at close, a
        # coordinator still loading on a fresh broker) at WARNING; errors only.
        "log_level": 3,
        "logger": _RdkafkaLog(),
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
    low, high = retrying(lambda: client.get_watermark_offsets(tp, timeout=min(10.0, timeout_s)), timeout_s)
    return int(low), int(high)


def cluster_partitions_map(settings: Settings) -> dict[str, int]:
    """Every topic on the cluster with its partition count: one metadata request, within ``kafka_timeout_ms``.

    Raises the operator's error (unreachable, authentication refused) when Kafka does not answer.
    """
    admin = admin_client(settings)
    try:
        return partition_counts(admin, settings.kafka_timeout_s)
    except KafkaException as exc:
        admin.poll(0)  # an admin client hands over its log lines (which name the cause) only when polled
        raise from_kafka(exc, settings, "reading the cluster's topics") from exc


# Which setting names each topic, for the message that tells how to point at another one.
_TOPIC_SETTING = {
    "numbers": "DMEDIAN_TOPIC_NUMBERS",
    "sketches": "DMEDIAN_TOPIC_SKETCHES",
    "medians": "DMEDIAN_TOPIC_MEDIANS",
    "dead_letters": "DMEDIAN_TOPIC_DEAD_LETTERS",
    "shard_changelog": "DMEDIAN_APP_ID",
}
# Topics whose partitions are shards: `dmedian topics grow` may have given them more.
_GROWABLE = frozenset({"numbers", "shard_changelog"})


def require_topics(settings: Settings, *which: str) -> dict[str, int]:
    """Check that the topics a command reads exist with their specs' partition counts.

    ``which`` names fields of :class:`~topics.specs.TopicSet` (``"numbers"``,
    ``"sketches"``, ...). Returns each topic's partition count on the cluster.
    Raises :class:`~pipeline.errors.TopicMissingError` or
    :class:`~pipeline.errors.PartitionMismatchError`, naming the setting to change.
    """
    found = cluster_partitions_map(settings)
    topics = topic_set(settings)
    counts = {}
    for field in which:
        spec: TopicSpec = getattr(topics, field)
        count = found.get(spec.name)
        if count is None:
            raise TopicMissingError(
                f"topic {spec.name!r} does not exist on {settings.bootstrap_servers}: set {_TOPIC_SETTING[field]} "
                "to the deployment's topic, or create the topics with `dmedian topics create`"
            )
        if field in _GROWABLE and count < spec.partitions:
            raise PartitionMismatchError(fewer_partitions_message(settings, spec.name, count))
        if field not in _GROWABLE and count != spec.partitions:
            raise PartitionMismatchError(
                f"topic {spec.name!r} has {count} partitions where its spec has {spec.partitions}: it was not "
                f"created by dmedian; point {_TOPIC_SETTING[field]} at the deployment's topic, or delete it and "
                "run `dmedian topics create`"
            )
        counts[spec.name] = count
    return counts
