"""The librdkafka fetcher against a real broker: it fetches what it was placed at, and only that.

The batch consumer moves partitions with :meth:`RdkafkaFetcher.place` and
:meth:`RdkafkaFetcher.drop` on every rebalance and seek, and mirrors Faust's pauses
into it; these tests pin what each call must leave behind.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from faust.types.tuples import TP

from pipeline.transport.columns import Columns
from pipeline.transport.rdkafka_fetch import RdkafkaFetcher
from tests.broker_fixture import BrokerHandle
from topics.admin import create_topics
from topics.specs import TopicSpec

pytestmark = pytest.mark.integration

RECORDS = 300


@pytest.fixture
def topic(kafka: BrokerHandle) -> str:
    """A 2-partition topic with RECORDS records per partition, values ``b"<partition>-<offset>"``."""
    name = f"fetcher-{uuid.uuid4().hex[:10]}"
    create_topics(AdminClient({"bootstrap.servers": kafka.bootstrap}), [TopicSpec(name, 2, 1)])
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 5})
    for offset in range(RECORDS):
        for partition in (0, 1):
            producer.produce(name, value=b"%d-%d" % (partition, offset), key=b"k", partition=partition)
    assert producer.flush(30) == 0
    return name


async def _fetch_until(
    fetcher: RdkafkaFetcher, count: int, paused: frozenset[TP] = frozenset(), rounds: int = 100
) -> dict[TP, list[int]]:
    """Offsets fetched per partition, until ``count`` records came (or ``rounds`` fetches of 0.1 s)."""
    found: dict[TP, list[int]] = {}
    for _ in range(rounds):
        fetched: dict[TP, Columns] = await fetcher.fetch(paused, 0.1)
        for tp, columns in fetched.items():
            assert columns.values == [b"%d-%d" % (tp.partition, offset) for offset in columns.offsets]
            found.setdefault(tp, []).extend(columns.offsets)
        if sum(map(len, found.values())) >= count:
            break
    return found


def _with_fetcher(kafka: BrokerHandle, body: Callable[[RdkafkaFetcher], Awaitable[None]]) -> None:
    """Run ``body`` with a fresh fetcher (at most 100 records a fetch), closed afterwards."""

    async def run() -> None:
        group = f"fetcher-{uuid.uuid4().hex[:8]}"
        connection = {"bootstrap.servers": kafka.bootstrap}
        fetcher = RdkafkaFetcher(lambda options: Consumer(connection | options), {"group.id": group}, 100)
        try:
            await body(fetcher)
        finally:
            await fetcher.close()

    asyncio.run(run())


def test_placed_partitions_are_fetched_from_their_offsets_in_order(kafka: BrokerHandle, topic: str) -> None:
    async def body(fetcher: RdkafkaFetcher) -> None:
        await fetcher.place({TP(topic, 0): 250, TP(topic, 1): None})  # None: the reset policy, earliest
        found = await _fetch_until(fetcher, 50 + RECORDS)
        assert found == {TP(topic, 0): list(range(250, RECORDS)), TP(topic, 1): list(range(RECORDS))}
        assert fetcher.highwater(TP(topic, 0)) == RECORDS

    _with_fetcher(kafka, body)


def test_a_partition_paused_then_dropped_then_placed_again_is_fetched_again(kafka: BrokerHandle, topic: str) -> None:
    # A rebalance: Faust pauses every partition, revokes them, assigns and seeks them
    # again. librdkafka keeps a pause across unassign and assign; the fetcher must not.
    async def body(fetcher: RdkafkaFetcher) -> None:
        tp = TP(topic, 0)
        await fetcher.place({tp: 0})
        assert (await _fetch_until(fetcher, 1))[tp][0] == 0
        await fetcher.fetch(frozenset({tp}), 0.2)  # Faust paused it: mirrored into librdkafka
        await fetcher.drop([tp])
        assert fetcher.assigned == frozenset()
        assert await fetcher.fetch(frozenset(), 0.1) == {}
        await fetcher.place({tp: 100})
        found = await _fetch_until(fetcher, RECORDS - 100)
        assert found == {tp: list(range(100, RECORDS))}

    _with_fetcher(kafka, body)


def test_a_paused_partition_is_not_fetched_until_resumed_and_loses_nothing(kafka: BrokerHandle, topic: str) -> None:
    async def body(fetcher: RdkafkaFetcher) -> None:
        tp = TP(topic, 0)
        await fetcher.place({tp: 0})
        offsets = (await _fetch_until(fetcher, 1)).get(tp, [])
        rounds: list[list[int]] = []
        for _ in range(8):
            fetched = await fetcher.fetch(frozenset({tp}), 0.1)
            rounds.append(fetched[tp].offsets if tp in fetched else [])
        assert rounds[2:] == [[]] * 6, "fetched while paused"
        offsets += [offset for found in rounds for offset in found]
        offsets += (await _fetch_until(fetcher, RECORDS - len(offsets))).get(tp, [])
        assert offsets == list(range(RECORDS)), "a pause and resume lost or repeated records"

    _with_fetcher(kafka, body)
