#!/usr/bin/env python3
"""Wall time and peak memory of ``dmedian verify`` on a big input topic.

Fills a fresh input topic with ``--count`` lognormal numbers as float64 blocks of
``--batch`` numbers (partition i gets every i-th block), builds each shard's KLL
sketch from the same numbers while producing, and publishes what a worker would
have: one snapshot per shard covering every offset, and the matching ``medians``
record. No worker runs, so the two cores go to the broker and to verify. Then it
runs ``dmedian verify --json`` in its own process for each ``--max-memory-mb``
and prints its wall time, throughput, passes and peak RSS.

    .venv/bin/python scripts/bench_verify.py --count 100000000
    KAFKA_BOOTSTRAP_SERVERS=host:9092 .venv/bin/python scripts/bench_verify.py --count 10000000
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import orjson
from bench_pipeline import bench_environment

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config import Settings, load_settings  # noqa: E402
from pipeline.core.codec import encode_float64_block  # noqa: E402
from pipeline.core.merge import GlobalEstimator  # noqa: E402
from pipeline.core.sketch import ShardState  # noqa: E402
from pipeline.core.wire import SketchSnapshot  # noqa: E402
from pipeline.kafka.clients import admin_client, producer  # noqa: E402
from pipeline.kafka.produce import produce_values  # noqa: E402
from topics import topic_set  # noqa: E402
from topics.admin import create_topics  # noqa: E402

_CHUNK = 1_000_000  # numbers generated and sketched at a time


def _round_robin(first: int, partitions: int) -> Callable[[int], int]:
    """The partition of a message by its 1-based sequence number, going on from message ``first`` of the run."""
    return lambda seq: (first + seq - 1) % partitions


def fill(settings: Settings, count: int, batch: int) -> tuple[int, float]:
    """Produce ``count`` numbers and the snapshots and record covering them; return (messages, seconds)."""
    partitions = settings.numbers_partitions
    states = [ShardState.empty(p, settings.sketch_k) for p in range(partitions)]
    sent = [0] * partitions  # messages per partition: a fresh topic's offsets are 0, 1, 2, ...
    client = producer(settings)
    started, messages = time.monotonic(), 0
    for first in range(0, count, _CHUNK):
        values = np.random.default_rng(first).lognormal(3.0, 1.0, min(_CHUNK, count - first))
        blocks = [values[i : i + batch] for i in range(0, values.size, batch)]
        targets = [(messages + j) % partitions for j in range(len(blocks))]
        produce_values(client, settings.topic_numbers, (encode_float64_block(b) for b in blocks),
                       partition=_round_robin(messages, partitions))  # fmt: skip
        for p in range(partitions):
            mine = [b for b, t in zip(blocks, targets, strict=True) if t == p]
            if mine:
                sent[p] += len(mine)
                states[p].apply(np.concatenate(mine), sent[p] - 1)
        messages += len(blocks)
        print(f"\r  produced {first + values.size:,} numbers", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    estimator = GlobalEstimator(settings.sketch_k, settings.quantiles)
    now = int(time.time() * 1000)
    snapshots = [SketchSnapshot.from_state(state, now) for state in states]
    for snapshot in snapshots:
        estimator.offer(snapshot)
    produce_values(client, settings.topic_sketches, (s.to_bytes() for s in snapshots),
                   key=lambda seq: str(seq - 1).encode())  # fmt: skip
    produce_values(client, settings.topic_medians, iter([estimator.record(now).to_json()]), key=lambda _: b"global")
    return messages, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000_000, help="numbers in the input topic")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1000, help="numbers per float64 block message")
    parser.add_argument("--max-memory-mb", type=int, action="append", help="verify's memory bound (repeatable)")
    args = parser.parse_args()
    memories = args.max_memory_mb or [256]
    with ExitStack() as stack:
        _tmp, bootstrap = bench_environment(stack, "dmedian-bench-verify-")
        run = f"bench-verify-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DMEDIAN_")} | {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DMEDIAN_APP_ID": run,
            "DMEDIAN_TOPIC_NUMBERS": f"{run}-numbers",
            "DMEDIAN_TOPIC_SKETCHES": f"{run}-sketches",
            "DMEDIAN_TOPIC_MEDIANS": f"{run}-medians",
            "DMEDIAN_TOPIC_DEAD_LETTERS": f"{run}-dead-letters",
            "DMEDIAN_NUMBERS_PARTITIONS": str(args.partitions),
        }
        settings = load_settings(environ=env)
        admin = admin_client(settings)
        create_topics(admin, topic_set(settings))
        stack.callback(lambda: admin.delete_topics([spec.name for spec in topic_set(settings)]))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}, broker {bootstrap}, {args.partitions} partitions")  # fmt: skip
        messages, seconds = fill(settings, args.count, args.batch)
        megabytes = args.count * 8 / 1e6
        print(f"input: {args.count:,} numbers in {messages:,} float64 blocks ({megabytes:,.0f} MB of doubles), "
              f"produced and sketched in {seconds:.1f} s")  # fmt: skip
        for memory in memories:
            started = time.monotonic()
            command = [sys.executable, "-m", "pipeline", "verify", "--json", "--max-memory-mb", str(memory)]
            done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=False)
            wall = time.monotonic() - started
            if not done.stdout.strip():
                raise SystemExit(f"verify printed nothing (exit {done.returncode}):\n{done.stderr[-3000:]}")
            report = orjson.loads(done.stdout)
            worst = max(q["rank_error"] for e in report["estimates"] for q in e["quantiles"])
            print(f"verify --max-memory-mb {memory}: exit {done.returncode} (ok={report['ok']}), n={report['n']:,}, "
                  f"{report['passes']} passes, wall {wall:.1f} s (in-process {report['seconds']:.1f} s), "
                  f"{report['n'] * report['passes'] / report['seconds'] / 1e6:.1f} M numbers/s over all passes, "
                  f"peak RSS {report['peak_rss_mb']:.0f} MB, largest window {report['peak_window_values']:,} numbers, "
                  f"worst rank error {worst:.5f}", flush=True)  # fmt: skip
            if args.count < 100_000_000:
                projected = wall * 100_000_000 / args.count
                print(f"  projected for 100,000,000 numbers at the same rate: {projected:.0f} s")


if __name__ == "__main__":
    main()
