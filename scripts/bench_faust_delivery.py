#!/usr/bin/env python3
"""Faust's delivery rate per record vs. per batch (``dmkafka://``) vs. a bare confluent-kafka loop.

The topic is filled first (single-number messages ``b"1.5"``, lz4 like the project's
producer), then each reader starts with a fresh consumer group and reads it all:

* ``faust kafka://``   a minimal agent, ``take_events(10000, within=0.5)``, one event per record;
* ``faust dmkafka://`` the same agent on the batch transport, one event per (partition, fetch);
* ``confluent``        a bare ``Consumer.consume(10000)`` loop (the reference, 1.0 x);
* ``aiokafka``         for context, a bare ``getmany`` loop (10,000 records at most per call):
                       the ceiling of any transport built on aiokafka, as Faust's is.

A Faust reader's rate is timed by a stream processor, from the first event it sees
to the last one (worker start-up and the final ``within`` wait excluded); the bare
loops from their first non-empty fetch to the one completing the input. Each
Faust agent runs in its own worker process, started by this script.

    .venv/bin/python scripts/bench_faust_delivery.py            # local broker on free ports
    KAFKA_BOOTSTRAP_SERVERS=host:9092 .venv/bin/python scripts/bench_faust_delivery.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from pipeline.kafka.produce import produce_values  # noqa: E402
from pipeline.localbroker import LocalBroker, LocalBrokerOptions, find_free_port_pair  # noqa: E402
from topics.admin import create_topics  # noqa: E402
from topics.specs import TopicSpec  # noqa: E402

TAKE_MAX = 10_000
TAKE_WITHIN_S = 0.5


def run_agent(scheme: str, bootstrap: str, topic: str, partitions: int, messages: int, result: Path) -> None:
    """Worker-process side: one Faust agent counting records; writes its timing to ``result``."""
    import faust  # noqa: PLC0415  # only the worker processes need Faust

    from pipeline.transport import batch_topic, register_transport  # noqa: PLC0415

    register_transport()
    app = faust.App(
        f"bench-delivery-{uuid.uuid4().hex[:8]}", broker=f"{scheme}://{bootstrap}", autodiscover=False,
        web_enabled=False, store="memory://", datadir=str(result.parent / f"{result.stem}-data"),
        key_serializer="raw", value_serializer="raw", topic_partitions=partitions,
        broker_max_poll_records=TAKE_MAX, stream_wait_empty=False,
    )  # fmt: skip
    batched = scheme != "kafka"
    source = (
        batch_topic(app, topic, partitions=partitions, internal=False)
        if batched
        else app.topic(topic, key_type=bytes, value_type=bytes, partitions=partitions, internal=False)
    )
    seen = {"first": 0.0, "last": 0.0, "events": 0}

    def stamp(value: Any) -> Any:
        now = time.monotonic()
        if not seen["events"]:
            seen["first"] = now
        seen["last"] = now
        seen["events"] += 1
        return value

    @app.agent(source)
    async def count(stream: Any) -> None:
        stream.add_processor(stamp)
        records = 0
        async for events in stream.take_events(TAKE_MAX, within=TAKE_WITHIN_S):
            records += sum(len(e.value) for e in events) if batched else len(events)
            if records >= messages:
                done = time.monotonic()
                elapsed = seen["last"] - seen["first"]
                result.write_text(json.dumps({
                    "records": records, "events": seen["events"], "seconds": elapsed,
                    "rate": records / max(elapsed, 1e-9), "to_done_s": done - seen["first"],
                }))  # fmt: skip

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def faust_rate(scheme: str, bootstrap: str, topic: str, partitions: int, messages: int, tmp: Path) -> dict[str, Any]:
    result = tmp / f"{scheme}-{uuid.uuid4().hex[:6]}.json"
    log = tmp / f"{result.stem}.log"
    cmd = [sys.executable, __file__, "--agent", scheme, "--bootstrap", bootstrap, "--topic", topic,
           "--partitions", str(partitions), "--messages", str(messages), "--result", str(result)]  # fmt: skip
    with log.open("wb") as out:
        worker = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while not result.exists():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{scheme}: no result (worker rc={worker.poll()}); see {log}")
            time.sleep(0.2)
        time.sleep(0.2)  # let the write finish
        body: dict[str, Any] = json.loads(result.read_text())
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
    if body["records"] != messages:
        raise SystemExit(f"{scheme}: counted {body['records']} records, produced {messages}")
    return body


def confluent_rate(bootstrap: str, topic: str, messages: int) -> dict[str, Any]:
    client = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"bench-bare-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })  # fmt: skip
    client.subscribe([topic])
    records = 0
    first = 0.0
    deadline = time.monotonic() + 600
    try:
        while records < messages:
            if time.monotonic() > deadline:
                raise SystemExit(f"confluent: only {records} of {messages} records")
            batch = client.consume(TAKE_MAX, timeout=1.0)
            if not batch:
                continue
            if not first:
                first = time.monotonic()
            records += sum(1 for m in batch if m.error() is None)
        elapsed = time.monotonic() - first
    finally:
        client.close()
    return {"records": records, "events": records, "seconds": elapsed, "rate": records / max(elapsed, 1e-9)}


def aiokafka_rate(bootstrap: str, topic: str, messages: int) -> dict[str, Any]:
    """The ceiling of any aiokafka-based transport: a bare getmany loop, same fetch size as the agents."""
    import asyncio  # noqa: PLC0415

    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

    async def read() -> dict[str, Any]:
        client = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"bench-aiokafka-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=TAKE_MAX,
        )  # fmt: skip
        await client.start()
        records = 0
        first = 0.0
        deadline = time.monotonic() + 600
        try:
            while records < messages:
                if time.monotonic() > deadline:
                    raise SystemExit(f"aiokafka: only {records} of {messages} records")
                fetched = await client.getmany(timeout_ms=1000)
                if fetched and not first:
                    first = time.monotonic()
                records += sum(len(batch) for batch in fetched.values())
            elapsed = time.monotonic() - first
        finally:
            await client.stop()
        return {"records": records, "events": records, "seconds": elapsed, "rate": records / max(elapsed, 1e-9)}

    return asyncio.run(read())


def fill_topic(bootstrap: str, topic: str, partitions: int, messages: int) -> None:
    # Clients live only inside these helpers, so none is left to log a closed
    # connection when the local broker stops.
    create_topics(AdminClient({"bootstrap.servers": bootstrap}), [TopicSpec(topic, partitions, 1)])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 1024 * 1024,
                         "compression.type": "lz4", "queue.buffering.max.messages": 1_000_000})  # fmt: skip
    produce_values(producer, topic, (b"1.5" for _ in range(messages)), partition=lambda i: i % partitions)


def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the futures are done
    for future in admin.delete_topics([topic]).values():
        future.result(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--agent", choices=["kafka", "dmkafka"], help=argparse.SUPPRESS)  # worker process mode
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent:
        run_agent(args.agent, args.bootstrap, args.topic, args.partitions, args.messages, args.result)
        return
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="dmedian-bench-delivery-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
        if not bootstrap:
            port, controller = find_free_port_pair()
            broker = LocalBroker(LocalBrokerOptions(port=port, controller_port=controller, home=tmp / "broker"))
            stack.callback(broker.reset)
            broker.start()
            bootstrap = broker.bootstrap
        topic = f"bench-delivery-{uuid.uuid4().hex[:8]}"
        fill_topic(bootstrap, topic, args.partitions, args.messages)
        stack.callback(delete_topic, bootstrap, topic)
        parts = args.partitions
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}, broker {bootstrap}; {args.messages:,} messages b'1.5' "
              f"on {args.partitions} partitions", flush=True)  # fmt: skip
        results = {
            "faust kafka:// (per record)": faust_rate("kafka", bootstrap, topic, parts, args.messages, tmp),
            "faust dmkafka:// (per batch)": faust_rate("dmkafka", bootstrap, topic, parts, args.messages, tmp),
            "aiokafka getmany (context)": aiokafka_rate(bootstrap, topic, args.messages),
            "confluent consume(10000)": confluent_rate(bootstrap, topic, args.messages),
        }
        bare = results["confluent consume(10000)"]["rate"]
        for name, r in results.items():
            print(f"{name:<30}{r['rate']:>12,.0f} msgs/s  {r['rate'] / bare:>6.3f} x bare   "
                  f"({r['events']:,} events, {r['seconds']:.2f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
