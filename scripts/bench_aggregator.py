#!/usr/bin/env python3
"""The aggregator at up to 10,000 shards: cost per incoming snapshot, per publish, memory.

In-process (default): for each shard count S, a steady stream of snapshots of
random shards, with a publish (merged sketch + record) every publish interval's
worth of snapshots at each given snapshot rate (capped at S snapshots per
emission interval: a shard emits at most once per interval). Every snapshot is a
realistic one (a KLL sketch fed about 1e6 numbers, k = 200) and goes through the
wire format: the cost per snapshot is decode (the ``sketches`` contract's
``accept``: parse, key and every check, as the aggregator runs it) plus
``GlobalEstimator.offer``. Memory per shard is the growth of the process's RSS
(C++ sketches included) while S shards are loaded and merged, in a fresh process.

Through Kafka, with one real worker: ``scripts/bench_aggregator_kafka.py``.

    .venv/bin/python scripts/bench_aggregator.py
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.merge import GlobalEstimator  # noqa: E402
from pipeline.core.merge_tree import MergeTreeOptions  # noqa: E402
from pipeline.core.sketch import ShardState  # noqa: E402
from pipeline.core.sketches_contract import SnapshotLimits, accept, shard_key  # noqa: E402
from pipeline.core.wire import SketchSnapshot  # noqa: E402

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size from /proc (sees C++ allocations, unlike tracemalloc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/status")


def base_snapshots(count: int, numbers: int, extra: int, k: int) -> list[tuple[SketchSnapshot, SketchSnapshot]]:
    """``count`` shard histories: a snapshot after about ``numbers`` numbers, and one ``extra`` numbers later."""
    rng = np.random.default_rng(11)
    bases = []
    for i in range(count):
        state = ShardState.empty(0, k)
        state.apply(rng.lognormal(float(i % 5), 1.0, numbers + i), 1)
        first = SketchSnapshot.from_state(state, 0)
        state.apply(rng.lognormal(float(i % 5), 1.0, extra), 2)
        bases.append((first, SketchSnapshot.from_state(state, 0)))
    return bases


def wire(base: SketchSnapshot, shard: int, offset: int) -> bytes:
    """``base`` re-addressed to ``shard`` at source offset ``offset``, in the wire format."""
    ts = int(time.time() * 1000)
    return dataclasses.replace(base, shard=shard, last_offset=offset, ts=ts).to_bytes()


def memory_per_shard(shards: int, bases: list[bytes], options: MergeTreeOptions, k: int) -> float:
    """RSS growth per shard while ``shards`` snapshots are decoded, offered and merged (call in a fresh process)."""
    messages = [wire(SketchSnapshot.from_bytes(bases[s % len(bases)]), s, 1) for s in range(shards)]
    gc.collect()
    before = rss_bytes()
    estimator = GlobalEstimator(k, QUANTILES, options)
    for message in messages:
        estimator.offer(SketchSnapshot.from_bytes(message))
    estimator.record(0)
    gc.collect()
    return (rss_bytes() - before) / shards


def in_process(args: argparse.Namespace, options: MergeTreeOptions) -> None:
    bases = [first for first, _ in base_snapshots(args.distinct, args.numbers, 0, args.k)]
    print(f"{len(bases)} distinct shard sketches of ~{args.numbers:,} numbers, k={args.k}: "
          f"{len(bases[0].sketch_bytes):,} B sketch, {len(bases[0].to_bytes()):,} B message; "
          f"tree {options.leaf_fanout}x{options.node_fanout}; publish every {args.publish_ms} ms, "
          f"a shard emits at most every {args.emit_ms} ms")  # fmt: skip
    with tempfile.NamedTemporaryFile(suffix=".pickle") as handle:
        pickle.dump([b.to_bytes() for b in bases], handle)
        handle.flush()
        for shards in args.shards:
            memory = subprocess.run(
                [sys.executable, __file__, "--memory-probe", str(shards), "--bases-file", handle.name,
                 "--leaf-fanout", str(options.leaf_fanout), "--node-fanout", str(options.node_fanout),
                 "--k", str(args.k)],
                check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            run_shards(args, options, bases, shards, float(memory))


def run_shards(
    args: argparse.Namespace, options: MergeTreeOptions, bases: list[SketchSnapshot], shards: int, memory: float
) -> None:
    rng = random.Random(shards)
    estimator = GlobalEstimator(args.k, QUANTILES, options)
    messages = [wire(bases[s % len(bases)], s, 1) for s in range(shards)]
    started = time.perf_counter()
    for message in messages:
        estimator.offer(SketchSnapshot.from_bytes(message))
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    estimator.record(0)
    built = time.perf_counter() - started
    print(f"\nS={shards:,}: memory {memory:,.0f} B/shard (RSS growth); load {loaded / shards * 1e6:.1f} us/snapshot, "
          f"first publish (every node) {built * 1e3:.1f} ms, tree height {estimator.merge_tree.height}")  # fmt: skip
    print(f"  {'snapshots/s':>11} {'per publish':>11} {'decode':>9} {'offer':>8} {'publish':>10} "
          f"{'publish/snap':>12} {'total/snap':>13} {'merges/snap':>11} {'CPU at rate':>12}")  # fmt: skip
    offset = 1
    limits = SnapshotLimits(shards)
    cap = shards * args.publish_ms / args.emit_ms
    for per_publish in sorted({max(1, int(min(rate * args.publish_ms / 1000, cap))) for rate in args.rates}):
        # Per publish cycle: seconds decoding, offering, publishing; the median cycle is
        # reported, so that a neighbour's burst on this shared machine does not decide it.
        cycles = []
        merges_before = estimator.merge_tree.merges
        for _ in range(args.publishes):
            offset += 1
            ids = [rng.randrange(shards) for _ in range(per_publish)]
            batch = [(shard_key(s), wire(bases[rng.randrange(len(bases))], s, offset)) for s in ids]
            started = time.perf_counter()
            snapshots = [accept(key, message, limits) for key, message in batch]
            decoded = time.perf_counter()
            for snapshot in snapshots:
                assert isinstance(snapshot, SketchSnapshot)
                estimator.offer(snapshot)
            offered = time.perf_counter()
            estimator.record(int(time.time() * 1000))
            cycles.append((decoded - started, offered - decoded, time.perf_counter() - offered))
        decode_s, offer_s, publish_s = np.median(np.array(cycles), axis=0)
        total = (decode_s + offer_s + publish_s) / per_publish
        cpu = total * per_publish / (args.publish_ms / 1000)
        merges = (estimator.merge_tree.merges - merges_before) / (per_publish * args.publishes)
        print(f"  {per_publish * 1000 / args.publish_ms:>11,.0f} {per_publish:>11,} "
              f"{decode_s / per_publish * 1e6:>7.1f}us {offer_s / per_publish * 1e6:>6.1f}us "
              f"{publish_s * 1e3:>8.1f}ms {publish_s / per_publish * 1e6:>10.1f}us "
              f"{total * 1e6:>11.1f}us {merges:>11.2f} {cpu:>11.0%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[100, 1000, 10_000], help="shard counts")
    parser.add_argument("--rates", type=float, nargs="+", default=[1000, 10_000, 50_000],
                        help="incoming snapshots per second")  # fmt: skip
    parser.add_argument("--numbers", type=int, default=1_000_000, help="numbers fed to each distinct sketch")
    parser.add_argument("--distinct", type=int, default=32, help="distinct sketches, reused across shards")
    parser.add_argument("--publishes", type=int, default=7, help="publish cycles measured per rate")
    parser.add_argument("--publish-ms", type=int, default=200, help="publish interval")
    parser.add_argument("--emit-ms", type=int, default=200, help="a shard's emission interval (caps the rate)")
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--leaf-fanout", type=int, default=MergeTreeOptions().leaf_fanout)
    parser.add_argument("--node-fanout", type=int, default=MergeTreeOptions().node_fanout)
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bases-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = MergeTreeOptions(args.leaf_fanout, args.node_fanout)
    if args.memory_probe:  # the child process of in_process(): a fresh heap for an honest RSS delta
        bases = pickle.loads(Path(args.bases_file).read_bytes())
        print(memory_per_shard(args.memory_probe, bases, options, args.k))
        return
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, one core used in-process")
    in_process(args, options)


if __name__ == "__main__":
    main()
