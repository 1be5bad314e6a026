#!/usr/bin/env python3
"""Throughput and end-to-end accuracy of ONE worker, per message format.

For each workload the input topic is filled first, then one worker is started.
The ingest rate comes from the shards' own snapshots on ``sketches`` (their
timestamps and counts), from the first snapshot to the one completing the input,
so worker start-up is not counted. The served quantiles of the final ``medians``
record are audited against the exact ones, and the time from the last snapshot to
that record (the aggregator's lag under full load) is printed too.

    .venv/bin/python scripts/bench_pipeline.py                 # local broker on a free port
    KAFKA_BOOTSTRAP_SERVERS=host:9092 .venv/bin/python scripts/bench_pipeline.py
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import OFFSET_BEGINNING, TopicPartition  # noqa: E402

from config import Settings, load_settings  # noqa: E402
from pipeline.cli.progress import progress_bar  # noqa: E402
from pipeline.core.exact import check_rank  # noqa: E402
from pipeline.core.wire import SketchSnapshot, parse_sketches_value  # noqa: E402
from pipeline.kafka.clients import admin_client, consumer, producer  # noqa: E402
from pipeline.kafka.follow import wait_for_record  # noqa: E402
from pipeline.kafka.generate import Distribution, MessageFormat, encode_messages, generate  # noqa: E402
from pipeline.kafka.produce import produce_values  # noqa: E402
from pipeline.localbroker import LocalBroker, LocalBrokerOptions, find_free_port_pair, free_port  # noqa: E402
from topics import topic_set  # noqa: E402
from topics.admin import create_topics  # noqa: E402

WORKLOADS = {
    "single": (MessageFormat.SINGLE, 1),
    "json-array-1000": (MessageFormat.JSON_ARRAY, 1000),
    "float64-1000": (MessageFormat.FLOAT64, 1000),
}


def ingest_timeline(settings: Settings) -> list[tuple[int, int]]:
    """(timestamp ms, numbers summarised by all shards) after each snapshot, in order."""
    client = consumer(settings, f"bench-{uuid.uuid4().hex[:8]}")
    tp = TopicPartition(settings.topic_sketches, 0, OFFSET_BEGINNING)
    end = client.get_watermark_offsets(tp, timeout=10)[1]
    client.assign([tp])
    latest: dict[int, int] = {}
    timeline = []
    try:
        while end:
            message = client.poll(1.0)
            if message is None or message.error():
                continue
            value = message.value()
            snapshot = parse_sketches_value(value) if value is not None else None
            if isinstance(snapshot, SketchSnapshot):  # not a heartbeat: no numbers in those
                latest[snapshot.shard] = max(latest.get(snapshot.shard, 0), snapshot.n)
                timeline.append((snapshot.ts, sum(latest.values())))
            offset = message.offset()
            if offset is not None and offset >= end - 1:
                break
    finally:
        client.close()
    return timeline


@dataclass(frozen=True)
class BenchInput:
    """A pre-produced input topic and the numbers it holds."""

    topic: str
    values: npt.NDArray[np.float64]
    fmt: MessageFormat
    batch: int
    messages: int
    partitions: int


def prepare_input(bootstrap: str, name: str, numbers: int, partitions: int) -> BenchInput:
    """Create a fresh input topic and fill it with ``numbers`` lognormal numbers in workload ``name``'s format."""
    fmt, batch = WORKLOADS[name]
    topic = f"bench-in-{name}-{uuid.uuid4().hex[:6]}"
    settings = load_settings(
        environ={"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DMEDIAN_TOPIC_NUMBERS": topic,
                 "DMEDIAN_NUMBERS_PARTITIONS": str(partitions)}
    )  # fmt: skip
    create_topics(admin_client(settings), [topic_set(settings).numbers])
    values = generate(Distribution.LOGNORMAL, numbers, seed=11)
    messages = produce_with_progress(settings, topic, encode_messages(values, fmt, batch), -(-numbers // batch))
    return BenchInput(topic, values, fmt, batch, messages, partitions)


def produce_with_progress(settings: Settings, topic: str, messages: Iterable[bytes], total: int) -> int:
    """Produce ``messages`` with a progress bar on stderr when it is a terminal (quiet when piped)."""
    with progress_bar(Console(stderr=True), "msg") as progress:
        task = progress.add_task(f"producing to {topic}", total=total)
        return produce_values(
            producer(settings), topic, messages, on_progress=lambda step: progress.advance(task, step)
        )


def measure_worker(bootstrap: str, data: BenchInput, tmp: Path, overrides: dict[str, str]) -> dict[str, float]:
    """Run one worker (fresh app id) over a pre-produced input topic; return its rate and accuracy."""
    run = f"bench-{uuid.uuid4().hex[:8]}"
    env = worker_env(bootstrap, run, tmp, {"topic_numbers": data.topic, "numbers_partitions": str(data.partitions)}
                     | overrides)  # fmt: skip
    settings = load_settings(environ=env)
    create_topics(admin_client(settings), topic_set(settings))
    numbers = data.values.size
    log = (tmp / f"{run}.log").open("wb")
    worker = start_worker(env, log)
    try:
        last = wait_for_record(settings, lambda r: r.n >= numbers, 900, lambda: worker.poll() is not None)
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
    if last is None or last.n != numbers:
        raise SystemExit(f"{data.topic}: incomplete (n={last.n if last else 0} of {numbers}); see {log.name}")
    timeline = ingest_timeline(settings)
    (start_ts, start_n), (end_ts, end_n) = timeline[0], next(t for t in timeline if t[1] >= numbers)
    seconds = max((end_ts - start_ts) / 1000, 1e-3)
    ordered = np.sort(data.values)
    worst = max(check_rank(ordered, e.q, e.band.value).rank_error for e in last.quantiles)
    admin_client(settings).delete_topics([spec.name for spec in topic_set(settings) if spec.name != data.topic])
    counted = end_n - start_n
    return {
        "messages": data.messages,
        "aggregator_lag_s": (last.ts - end_ts) / 1000,
        "msgs_per_s": counted / data.batch / seconds,
        "numbers_per_s": counted / seconds,
        "worst_rank_error": worst,
        "bound": last.rank_error,
    }


def worker_env(bootstrap: str, run: str, tmp: Path, settings: dict[str, str]) -> dict[str, str]:
    """The environment of a worker of run ``run``: its own app id, topics, data dir and web port."""
    base = {
        "app_id": run, "topic_numbers": f"{run}-numbers", "topic_sketches": f"{run}-sketches",
        "topic_medians": f"{run}-medians", "topic_dead_letters": f"{run}-dead-letters",
        "data_dir": str(tmp / run), "web_port": str(free_port()), "log_level": "warning",
    }  # fmt: skip
    return (
        {k: v for k, v in os.environ.items() if not k.startswith("DMEDIAN_")}
        | {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}
        | {f"DMEDIAN_{key.upper()}": value for key, value in (base | settings).items()}
    )


def start_worker(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start ``dmedian worker`` with ``env``, logging to ``log``."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", "worker"], env=env, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def deploy_worker(stack: ExitStack, env: dict[str, str], log_path: Path) -> tuple[Settings, subprocess.Popen[bytes]]:
    """Create the run's topics and start its worker; ``stack`` stops the worker."""
    settings = load_settings(environ=env)
    create_topics(admin_client(settings), topic_set(settings))
    worker = start_worker(env, log_path.open("wb"))
    stack.callback(worker.wait, 60)
    stack.callback(worker.terminate)
    return settings, worker


def bench_environment(stack: ExitStack, prefix: str) -> tuple[Path, str]:
    """A temp dir, and ``KAFKA_BOOTSTRAP_SERVERS`` or else a local broker on free ports; both undone by ``stack``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if not bootstrap:
        port, controller = find_free_port_pair()
        broker = LocalBroker(LocalBrokerOptions(port=port, controller_port=controller, home=tmp / "broker"))
        broker.start()
        stack.callback(broker.reset)
        bootstrap = broker.bootstrap
    return tmp, bootstrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=300_000, help="numbers for the single-number workload")
    parser.add_argument("--batched", type=int, default=5_000_000, help="numbers for each batched workload")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE", help="a worker setting")
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append", help="run only these workloads")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp, bootstrap = bench_environment(stack, "dmedian-bench-")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}, broker {bootstrap}, {args.partitions} partitions")  # fmt: skip
        print(f"{'workload':<18}{'numbers':>12}{'msgs/s':>12}{'numbers/s':>14}{'worst rank err':>16}{'bound':>9}"
              f"{'agg. lag':>10}")  # fmt: skip
        overrides = dict(item.split("=", 1) for item in args.set)
        if overrides:
            print(f"settings: {overrides}")
        for name in args.only or WORKLOADS:
            numbers = args.single if name == "single" else args.batched
            started = time.monotonic()
            data = prepare_input(bootstrap, name, numbers, args.partitions)
            r = measure_worker(bootstrap, data, tmp, overrides)
            admin_client(load_settings(environ={"KAFKA_BOOTSTRAP_SERVERS": bootstrap})).delete_topics([data.topic])
            print(f"{name:<18}{numbers:>12,}{r['msgs_per_s']:>12,.0f}{r['numbers_per_s']:>14,.0f}"
                  f"{r['worst_rank_error']:>16.5f}{r['bound']:>9.5f}{r['aggregator_lag_s']:>9.1f}s"
                  f"   ({time.monotonic() - started:.0f} s)",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
