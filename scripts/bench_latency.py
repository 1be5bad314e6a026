#!/usr/bin/env python3
"""Latency from produce to a ``medians`` record that includes the number.

One worker (default settings: batch delivery, 200 ms emission and publish
intervals) consumes single-number messages produced at a fixed rate. For every
message we know when it was handed to the producer; for every ``medians`` record
we know when it reached a reader. A number counts as reflected once a record's
``n`` reaches its position in the stream: as far as the global count tells
(shards progress independently, so this is the latency of the count, not of one
particular number). Timestamps come from the same clock; nothing sleeps to measure.

    .venv/bin/python scripts/bench_latency.py --rate 50000 --seconds 30
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from bench_pipeline import bench_environment, deploy_worker, worker_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.kafka.clients import producer  # noqa: E402
from pipeline.kafka.follow import follow_medians, wait_for_record  # noqa: E402


def main() -> None:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50_000, help="messages per second")
    parser.add_argument("--seconds", type=float, default=30, help="how long to produce")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE", help="a worker setting")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp, bootstrap = bench_environment(stack, "dmedian-latency-")
        run = f"latency-{uuid.uuid4().hex[:8]}"
        env = worker_env(bootstrap, run, tmp, {"numbers_partitions": str(args.partitions)}
                         | dict(item.split("=", 1) for item in args.set))  # fmt: skip
        settings, worker = deploy_worker(stack, env, tmp / "worker.log")
        client = producer(settings, linger_ms=1)
        # Warm up: the worker is ready once one number comes out.
        client.produce(settings.topic_numbers, b"0")
        client.flush(30)
        if wait_for_record(settings, lambda r: r.n >= 1, 120, lambda: worker.poll() is not None) is None:
            raise SystemExit(f"worker did not start; see {tmp / 'worker.log'}")

        total = int(args.rate * args.seconds)
        sent_at = np.zeros(total)
        seen: list[tuple[int, float]] = []
        done = threading.Event()

        def follow() -> None:
            for record in follow_medians(settings, poll_s=0.05):
                now = time.time()
                if record is not None:
                    seen.append((record.n - 1, now))  # minus the warm-up number
                    if record.n - 1 >= total:
                        break
                if done.is_set() and now > deadline:
                    break

        deadline = float("inf")
        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        started = time.time()
        for i in range(total):
            while True:
                try:
                    client.produce(settings.topic_numbers, b"%d.5" % (i % 1000))
                    break
                except BufferError:
                    client.poll(0.01)
            sent_at[i] = time.time()
            client.poll(0)
            ahead = (i + 1) / args.rate - (sent_at[i] - started)
            if ahead > 0.001:
                time.sleep(ahead)
        client.flush(60)
        produced_in = time.time() - started
        deadline = time.time() + 60
        done.set()
        reader.join(90)

        counts = np.array([n for n, _ in seen])
        arrivals = np.array([t for _, t in seen])
        index = np.searchsorted(counts, np.arange(1, total + 1), side="left")
        covered = index < counts.size
        latencies = (arrivals[index[covered]] - sent_at[covered]) * 1000
        print(f"produced {total:,} single-number messages at {total / produced_in:,.0f} msgs/s "
              f"(target {args.rate:,.0f}); {covered.sum():,} reflected in a medians record")  # fmt: skip
        print(f"latency produce -> medians: p50 {np.percentile(latencies, 50):.0f} ms, "
              f"p90 {np.percentile(latencies, 90):.0f} ms, p99 {np.percentile(latencies, 99):.0f} ms, "
              f"max {latencies.max():.0f} ms")  # fmt: skip
        gaps = np.diff(arrivals) * 1000
        worst = np.argsort(gaps)[-3:][::-1]
        print("longest gaps between medians records: " + ", ".join(
            f"{gaps[i]:.0f} ms at +{arrivals[i] - started:.1f} s" for i in worst))  # fmt: skip


if __name__ == "__main__":
    main()
