"""Real-broker tests for pipeline.localbroker (no mocks: a JVM broker on free ports)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # module lacks __all__

from pipeline.localbroker import (
    BrokerError,
    LocalBroker,
    LocalBrokerOptions,
    find_free_port_pair,
)

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0


def _new_broker(home: Path) -> LocalBroker:
    port, controller_port = find_free_port_pair()
    return LocalBroker(LocalBrokerOptions(port=port, controller_port=controller_port, home=home))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    b = _new_broker(tmp_path / "broker")
    try:
        yield b
    finally:
        b.reset()  # never leave a JVM behind, even when the test fails


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1)],
        operation_timeout=TIMEOUT_S,
    )
    futures[topic].result(timeout=TIMEOUT_S)


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(TIMEOUT_S) == 0, "message not delivered in time"
    assert errors == []


def _consume_first(bootstrap: str, topic: str) -> tuple[bytes | None, bytes | None]:
    # A fresh group each time, reading from the start: proves the data is on disk.
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.retriable() or err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue  # leader/coordinator still settling after a restart
                pytest.fail(f"consumer error: {err}")
            return msg.key(), msg.value()
        pytest.fail(f"no message from {topic} within {TIMEOUT_S:.0f}s")
    finally:
        consumer.close()


def test_produce_consume_survives_restart(broker: LocalBroker) -> None:
    topic = "localbroker-restart"
    broker.start()
    status = broker.status()
    assert status.running
    assert status.answering
    assert status.pid is not None

    _create_topic(broker.bootstrap, topic)
    _produce(broker.bootstrap, topic, b"k1", b"v1")
    assert _consume_first(broker.bootstrap, topic) == (b"k1", b"v1"), broker.log_tail()

    broker.stop()
    assert broker.status().running is False

    broker.start()  # same home, same data dir: no reformat, the topic must survive
    assert _consume_first(broker.bootstrap, topic) == (b"k1", b"v1"), broker.log_tail()

    broker.stop()
    final = broker.status()
    assert final.running is False
    assert final.answering is False
    assert final.pid is None


def test_second_broker_on_same_port_is_refused(broker: LocalBroker, tmp_path: Path) -> None:
    broker.start()
    other = LocalBroker(
        LocalBrokerOptions(
            port=broker.port,
            controller_port=find_free_port_pair()[0],
            home=tmp_path / "other",
        )
    )
    with pytest.raises(BrokerError, match="something else is listening"):
        other.start()
    assert other.status().running is False
    other.stop()  # no-op when not running
    # The first broker is unharmed, and starting it again just adopts it.
    broker.start()
    assert broker.status().answering
