"""A minimal Faust worker on the ``dmkafka://`` batch transport, for the batch transport tests.

Run as ``python -m tests.integration.batch_app`` with these environment variables:
``BATCH_APP_BOOTSTRAP``, ``BATCH_APP_ID``, ``BATCH_APP_TOPIC`` (batch-delivered),
``BATCH_APP_SINGLES`` (delivered per record), ``BATCH_APP_EVENTS`` (a JSON-lines
file the agents append one line per event to), ``BATCH_APP_DATADIR`` and, optionally,
``BATCH_APP_FETCHER`` (``librdkafka``: fetch the batch topic with librdkafka).

The batch agent counts records per partition into a table (raw codec, so the
changelog carries the counts as ASCII), which makes Faust route each write to the
changelog partition of the current event.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any, TextIO

import faust
from confluent_kafka import Consumer

from pipeline.transport import RawBatch, batch_topic, fetch_with_librdkafka, register_transport

PARTITIONS = 4
"""Partitions of the batch-delivered topic (and of the table)."""
SINGLES_PARTITIONS = 2
"""Partitions of the per-record topic."""


def build(env: dict[str, str], events: TextIO) -> faust.App:
    """The app: a batch agent with a count table, and a per-record agent."""
    register_transport()
    app = faust.App(
        env["BATCH_APP_ID"],
        broker=f"dmkafka://{env['BATCH_APP_BOOTSTRAP']}",
        autodiscover=False,
        web_enabled=False,
        store="memory://",
        datadir=env["BATCH_APP_DATADIR"],
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=PARTITIONS,
        # Small fetches, so that each partition arrives in many batches.
        broker_max_poll_records=500,
        broker_commit_interval=1.0,
    )
    if env.get("BATCH_APP_FETCHER") == "librdkafka":
        connection = {"bootstrap.servers": env["BATCH_APP_BOOTSTRAP"]}
        fetch_with_librdkafka(app, lambda options: Consumer(connection | options))
    numbers = batch_topic(app, env["BATCH_APP_TOPIC"], partitions=PARTITIONS, internal=False)
    singles = app.topic(
        env["BATCH_APP_SINGLES"], key_type=bytes, value_type=bytes, partitions=SINGLES_PARTITIONS, internal=False
    )
    counts = app.Table("counts", key_type=bytes, value_type=bytes, partitions=PARTITIONS)

    def emit(line: dict[str, Any]) -> None:
        events.write(json.dumps(line) + "\n")
        events.flush()

    @app.agent(numbers)
    async def count_batches(stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            batch: RawBatch = event.value
            partition = event.message.partition
            key = str(partition).encode()
            counts[key] = str(int(counts.get(key, b"0")) + len(batch)).encode()
            emit({"kind": "batch", "p": partition, "offset": event.message.offset, "offsets": batch.offsets})
            yield None

    @app.agent(singles)
    async def count_singles(stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            message = event.message
            emit({"kind": "single", "p": message.partition, "offset": message.offset, "value": event.value.decode()})
            yield None

    return app


def main() -> None:
    env = dict(os.environ)
    with open(env["BATCH_APP_EVENTS"], "a", encoding="utf-8") as events:
        app = build(env, events)
        faust.Worker(app, loglevel="INFO", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
