#!/usr/bin/env python3
"""The ceiling of ONE aggregator through Kafka, in snapshots per second, at 10,000 shards.

One real worker (``deploy_worker``) hosts the aggregator; this script writes valid
snapshots of ``--shards`` shard ids straight onto its ``sketches`` topic with
confluent-kafka (the worker's ``shard_id_limit`` admits the synthetic ids; its own
input topic stays small) and reads the ``medians`` records they cause. Phases:

* ``burst``: every shard's first snapshot at once (a fresh cluster's start-up);
* ``drift``: every shard's next snapshot at once, each urgent (every shard spent
  its error budget together);
* ``takeover``: the worker is stopped and a new one started; it rebuilds from the
  compacted topic, then every shard announces its (unchanged) state again, as
  restored shards do, followed by one changed snapshot whose record shows when the
  announcements were absorbed.

A record covers the first c snapshots of a phase when its ``n`` has grown by their
counts (one partition: they are applied in the order sent). Each snapshot's latency
is its record's publication time (``ts``) minus the time it was handed to the
producer. Printed per phase: send time, time until a record covered all of them,
snapshots/s, and the latency of the first snapshot sent, p50, p99 and max.

    .venv/bin/python scripts/bench_aggregator_kafka.py                       # 10,000 shards, batch delivery
    .venv/bin/python scripts/bench_aggregator_kafka.py --set delivery=event  # Faust's per-record delivery
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_aggregator import base_snapshots, rss_bytes  # noqa: E402
from bench_pipeline import bench_environment, deploy_worker, start_worker, worker_env  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from config import Settings  # noqa: E402
from pipeline.core.sketches_contract import shard_key  # noqa: E402
from pipeline.core.wire import MedianRecord, SketchSnapshot  # noqa: E402
from pipeline.kafka.clients import producer  # noqa: E402
from pipeline.kafka.follow import follow_medians, wait_for_record  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Phase:
    """A wave of snapshots and what each adds to the estimate's n."""

    name: str
    snapshots: list[tuple[int, SketchSnapshot, int, bool]]  # (shard, state, offset, urgent), in send order
    growth: list[int]  # what each adds to n when applied (0: a resend of a state already held)

    def messages(self) -> list[tuple[int, bytes]]:
        """(shard, wire bytes) of each, stamped now: a stale timestamp would make the shards look dead."""
        return [(shard, snapshot(base, shard, offset, urgent)) for shard, base, offset, urgent in self.snapshots]


def snapshot(base: SketchSnapshot, shard: int, offset: int, urgent: bool = False) -> bytes:
    """``base`` re-addressed to ``shard`` at source offset ``offset``, sent now, in the wire format."""
    ts = int(time.time() * 1000)
    return dataclasses.replace(base, shard=shard, last_offset=offset, ts=ts, urgent=urgent).to_bytes()


def send(client: Producer, topic: str, messages: list[tuple[int, bytes]]) -> list[float]:
    """Produce every message as fast as the client takes them; return each one's send time (epoch s)."""
    sent = []
    for shard, value in messages:
        sent.append(time.time())
        while True:
            try:
                client.produce(topic, value=value, key=shard_key(shard))
                break
            except BufferError:
                client.poll(0.05)
        client.poll(0)
    if client.flush(120):
        raise SystemExit("snapshots not delivered")
    return sent


def records_after(
    follower: Iterator[MedianRecord | None], n_from: int, n_to: int, deadline: float
) -> list[MedianRecord]:
    """The records published until one reaches ``n_to`` (from ``n_from``); exits past ``deadline``."""
    seen = []
    for record in follower:
        if record is not None and record.n > n_from:
            seen.append(record)
            if record.n >= n_to:
                return seen
        if time.monotonic() > deadline:
            raise SystemExit(f"incomplete: last record n={seen[-1].n if seen else n_from}, expected {n_to}")
    return seen


def measure(settings: Settings, client: Producer, phase: Phase, n_before: int, timeout_s: float) -> int:
    """Send ``phase``, follow its records, print its figures; return n after it."""
    follower = follow_medians(settings, poll_s=0.05)
    next(follower)  # positioned at the latest record before the wave
    sent = send(client, settings.topic_sketches, phase.messages())
    produced_s = sent[-1] - sent[0]
    cumulative = np.cumsum(phase.growth)
    n_after = n_before + int(cumulative[-1])
    records = records_after(follower, n_before, n_after, time.monotonic() + timeout_s)
    del follower  # closes its consumer (the generator is finalised at once)
    # The first record covering the first c snapshots covers snapshot c - 1 (0-based) and all before it.
    latency = np.empty(len(sent))
    done = 0
    for record in records:
        covered = bisect.bisect_right(cumulative, record.n - n_before)
        if covered < len(cumulative) and record.n - n_before not in (0, int(cumulative[covered - 1])):
            raise SystemExit(f"record n={record.n} matches no prefix of the wave: out of order?")
        latency[done:covered] = record.ts / 1000 - np.array(sent[done:covered])
        done = max(done, covered)
    # Resends (growth 0) are covered by the first record after them that covers a changed snapshot.
    total_s = records[-1].ts / 1000 - sent[0]
    changed = int(np.count_nonzero(phase.growth))
    first_s, p50, p99, worst = latency[0], *np.percentile(latency, [50, 99, 100])
    print(f"{phase.name:<9}{len(sent):>8,}{changed:>9,}{produced_s:>9.2f}s{total_s:>9.2f}s"
          f"{len(sent) / total_s:>12,.0f}{first_s:>9.3f}s{p50:>9.3f}s{p99:>9.3f}s{worst:>9.3f}s{len(records):>9}",
          flush=True)  # fmt: skip
    return n_after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--numbers", type=int, default=1_000_000, help="numbers fed to each distinct sketch")
    parser.add_argument("--distinct", type=int, default=32, help="distinct sketches, reused across shards")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE", help="a worker setting")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    args = parser.parse_args()
    shards, delta = args.shards, 1000
    bases = base_snapshots(args.distinct, args.numbers, delta, args.k)
    first = [bases[s % len(bases)][0] for s in range(shards)]
    second = [bases[s % len(bases)][1] for s in range(shards)]
    # Shard 0's warm-up snapshot holds the same state as its burst snapshot: it adds nothing.
    burst = Phase("burst", [(s, first[s], 1000, False) for s in range(shards)], [0] + [b.n for b in first[1:]])
    drift = Phase("drift", [(s, second[s], 2000, True) for s in range(shards)],
                  [b.n - a.n for a, b in zip(first, second, strict=True)])  # fmt: skip
    # The restored shards' announcements (their state unchanged), then shard 0 one step on
    # (another base's sketch: its n is one more), whose record shows when they were absorbed.
    announce = Phase(
        "takeover",
        [(s, second[s], 2000, False) for s in range(shards)] + [(0, second[1], 3000, True)],
        [0] * shards + [second[1].n - second[0].n],
    )
    overrides = {"shard_id_limit": str(shards)} | dict(item.split("=", 1) for item in args.set)
    with ExitStack() as stack:
        tmp, bootstrap = bench_environment(stack, "dmedian-aggkafka-")
        run = f"aggkafka-{uuid.uuid4().hex[:8]}"
        env = worker_env(bootstrap, run, tmp, {"numbers_partitions": "1"} | overrides)
        settings, worker = deploy_worker(stack, env, tmp / "worker.log")
        # As the shards send them: Faust's producer does not compress.
        client = producer(settings, compression_type="none")
        stack.callback(lambda: client.flush(10))
        size = sum(len(v) for _, v in burst.messages())
        print(f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f}), broker {bootstrap}; "
              f"{shards:,} shards, {size / 1e6:.1f} MB per wave ({size // shards:,} B a snapshot); "
              f"worker settings {overrides}")  # fmt: skip
        # Ready once a snapshot comes out as a record; the burst replaces that shard's state.
        send(client, settings.topic_sketches, [(0, snapshot(first[0], 0, 0))])
        ready = wait_for_record(settings, lambda r: r.shards >= 1, 120, lambda: worker.poll() is not None)
        if ready is None:
            raise SystemExit(f"the worker did not start; see {tmp / 'worker.log'}")
        rss = rss_bytes(worker.pid)
        print(f"{'phase':<9}{'sent':>8}{'changed':>9}{'send':>10}{'covered':>10}{'snaps/s':>12}"
              f"{'first':>10}{'p50':>10}{'p99':>10}{'max':>10}{'records':>9}")  # fmt: skip
        n = measure(settings, client, burst, ready.n, args.timeout)
        print(f"  worker RSS grew {(rss_bytes(worker.pid) - rss) / shards:,.0f} B per shard")
        n = measure(settings, client, drift, n, args.timeout)
        worker.terminate()
        worker.wait(60)
        started = time.time()
        log = (tmp / "worker-2.log").open("wb")
        successor = start_worker(env | {"DMEDIAN_DATA_DIR": str(tmp / f"{run}-2")}, log)
        stack.callback(successor.wait, 60)
        stack.callback(successor.terminate)
        restored = wait_for_record(settings, lambda r: r.ts / 1000 > started, args.timeout,
                                   lambda: successor.poll() is not None)  # fmt: skip
        if restored is None or (restored.n, restored.shards) != (n, shards):
            raise SystemExit(f"the new worker's first record is not complete: {restored}; see {log.name}")
        print(f"  new worker: first record (complete) {restored.ts / 1000 - started:.2f} s after its start "
              f"(process start, group join, rebuild of {shards:,} shards from the compacted topic)")  # fmt: skip
        measure(settings, client, announce, n, args.timeout)
        # The figures move with the machine's load: the run states it (other processes share the cores).
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
