#!/usr/bin/env python3
"""Edge shards at fleet scale: bytes per number, snapshots per source, and the error against the bound.

``--sources`` sources (1,000) each add ``--numbers`` numbers (100,000) through
``SketchingSource``, with the default settings, simulated in ``--processes``
processes (each one shares one ``SnapshotSender`` among its sources). One real
worker hosts the aggregator on a local broker (or ``KAFKA_BOOTSTRAP_SERVERS``).
Each source adds ``--chunk`` numbers per round, one round every ``--round-ms``.

Two streams:

* ``same``: every source draws from N(0, 1);
* ``spread``: source i draws from N(mu_i, 1), the means spread evenly over 3 sigma.

At checkpoints (and at the end) every process pauses after a round for
``--settle-ms``, then the served p50, p90 and p99 of the latest record are checked
against the exact ranks of every number added so far (regenerated here from the
same seeds), each against its own ``rank_bound``. Printed: bytes per number on the
``sketches`` topic (values, and keys + values), snapshots and heartbeats per
source, the aggregator's snapshots per second, and the worst error as a share of
its bound. Then the cost at the source: ``add_many`` of 1,000 numbers through a
live ``SketchingSource`` against a bare ``kll_doubles_sketch.update`` of the same array.

    .venv/bin/python scripts/bench_sources.py                       # both streams, 1,000 x 100,000
    .venv/bin/python scripts/bench_sources.py --streams same --sources 100 --numbers 20000
    .venv/bin/python scripts/bench_sources.py --error-budget 0.01       # a looser bound, fewer snapshots
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import platform
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_many_shards import wait_healthy  # noqa: E402
from bench_pipeline import bench_environment, deploy_worker, worker_env  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition  # noqa: E402

from config import Settings, load_settings  # noqa: E402
from pipeline.core.source_contract import is_source_key  # noqa: E402
from pipeline.core.wire import MedianRecord  # noqa: E402
from pipeline.kafka.audit_reader import latest_median_record  # noqa: E402
from pipeline.kafka.clients import consumer  # noqa: E402
from pipeline.kafka.follow import wait_for_record  # noqa: E402

SPREAD_SIGMA = 3.0
_WAIT_S = 1_800.0  # the longest any side waits for the other (a failure elsewhere ends the run, not hangs it)


@dataclass(frozen=True)
class Plan:
    """What every process does, round by round."""

    stream: str
    sources: int
    numbers: int
    chunk: int
    round_ms: int
    settle_ms: int
    checkpoints: tuple[int, ...]  # rounds after which everyone pauses for a check
    growth: float | None = None  # the sources' growth cap (None: the library's default)
    error_budget: float | None = None  # theta, for the worker and the sources alike (None: the setting's default)

    @property
    def rounds(self) -> int:
        return self.numbers // self.chunk


def chunk_of(plan: Plan, source: int, round_no: int) -> npt.NDArray[np.float64]:
    """Source ``source``'s numbers of round ``round_no`` (the same here and in the checker)."""
    rng = np.random.default_rng((source, round_no, 20261207))
    mean = 0.0 if plan.stream == "same" else SPREAD_SIGMA * source / max(plan.sources - 1, 1)
    return rng.normal(mean, 1.0, plan.chunk)


def run_sources(plan: Plan, env: dict[str, str], ids: list[int], barrier: Barrier, results: Any) -> None:
    """One process: its sources, one shared sender, paced rounds, pauses at the checkpoints."""
    os.environ.update(env)
    from pipeline.source import SketchingSource, SnapshotSender, source_options  # noqa: PLC0415 (after the env)

    settings = load_settings()
    sender = SnapshotSender(settings)
    options = source_options(settings)
    if plan.growth is not None:
        options = dataclasses.replace(options, growth=plan.growth)
    sources = [SketchingSource(f"src-{i:05d}", settings, sender=sender, options=options) for i in ids]
    barrier.wait(_WAIT_S)
    started = time.monotonic()
    for round_no in range(plan.rounds):
        for i, source in zip(ids, sources, strict=True):
            source.add_many(chunk_of(plan, i, round_no))
        if round_no + 1 in plan.checkpoints:
            barrier.wait(_WAIT_S)  # done with the round
            barrier.wait(_WAIT_S)  # the check is over
            started = time.monotonic() - (round_no + 1) * plan.round_ms / 1000
        delay = started + (round_no + 1) * plan.round_ms / 1000 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for source in sources:
        source.close()
    sender.close()
    results.put({"snapshots": [s.seq for s in sources], "messages": sender.messages_sent,
                 "bytes": sender.bytes_sent, "failed": sender.failed, "n": [s.n for s in sources]})  # fmt: skip


def all_numbers(plan: Plan, rounds: int) -> npt.NDArray[np.float64]:
    """Every number added in the first ``rounds`` rounds, by every source."""
    return np.concatenate([chunk_of(plan, i, r) for i in range(plan.sources) for r in range(rounds)])


def worst_error(record: MedianRecord, values: npt.NDArray[np.float64]) -> tuple[float, str]:
    """The largest rank error of p50/p90/p99 as a share of its own rank_bound, and a summary."""
    worst, parts = 0.0, []
    for estimate in record.quantiles:
        x, bound = estimate.band.value, record.bound_of(estimate)
        low = np.count_nonzero(values < x) / values.size
        high = np.count_nonzero(values <= x) / values.size
        error = max(low - estimate.q, estimate.q - high, 0.0)
        worst = max(worst, error / bound)
        parts.append(f"p{estimate.q * 100:g} {error * 100:.3f}% (bound {bound * 100:.2f}%)")
    return worst, ", ".join(parts)


def check(settings: Settings, plan: Plan, rounds: int, label: str) -> float:
    """Compare the latest record with the exact ranks of every number added in ``rounds`` rounds."""
    record = latest_median_record(settings)
    assert record is not None, "no record"
    values = all_numbers(plan, rounds)
    worst, summary = worst_error(record, values)
    held = worst <= 1.0
    print(f"  {label:<12} added {values.size:>11,}  record n {record.n:>11,} ({record.n / values.size:6.1%})  "
          f"sources {record.sources:>5}  {summary}  worst {worst:.2f} of bound {'ok' if held else 'EXCEEDED'}",
          flush=True)  # fmt: skip
    return worst


def topic_traffic(settings: Settings) -> dict[str, Any]:
    """Every record on ``sketches``: edge snapshots and heartbeats, bytes, and snapshots per second."""
    client = consumer(settings, f"bench-sources-{uuid.uuid4().hex[:8]}")
    tp = TopicPartition(settings.topic_sketches, 0, OFFSET_BEGINNING)
    end = client.get_watermark_offsets(tp, timeout=30)[1]
    client.assign([tp])
    values = keys = snapshots = heartbeats = 0
    per_second: dict[int, int] = {}
    read = 0
    while read < end:
        for message in client.consume(10_000, 1.0):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    print(f"  sketches: {error}")
                continue
            read += 1
            key, value = message.key(), message.value() or b""
            if not is_source_key(key):
                continue
            keys, values = keys + len(key or b""), values + len(value)
            if key is not None and key.endswith(b".progress"):
                heartbeats += 1
            else:
                snapshots += 1
                second = message.timestamp()[1] // 1000
                per_second[second] = per_second.get(second, 0) + 1
    client.close()
    rates = np.array(sorted(per_second.values())) if per_second else np.zeros(1)
    span = (max(per_second) - min(per_second) + 1) if per_second else 1
    return {"values": values, "keys": keys, "snapshots": snapshots, "heartbeats": heartbeats,
            "mean_rate": snapshots / span, "peak_rate": int(rates.max()), "span_s": span}  # fmt: skip


def run_stream(stack: ExitStack, tmp: Path, bootstrap: str, plan: Plan, processes: int) -> dict[str, Any]:
    """One stream end to end; prints its figures and returns them."""
    run = f"bench-src-{plan.stream}-{uuid.uuid4().hex[:6]}"
    overrides = {"numbers_partitions": "1"}
    if plan.error_budget is not None:  # the sources read the same environment, so both sides use it
        overrides["error_budget"] = str(plan.error_budget)
    env = worker_env(bootstrap, run, tmp, overrides)
    settings, worker = deploy_worker(stack, env, tmp / f"{run}.log")
    wait_healthy([int(env["DMEDIAN_WEB_PORT"])], 1, [worker], 180)  # hosts the aggregator, rebuilt
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    results = ctx.Queue()
    ids = np.array_split(np.arange(plan.sources), processes)
    children = [ctx.Process(target=run_sources, args=(plan, env, [int(i) for i in part], barrier, results))
                for part in ids]  # fmt: skip
    for child in children:
        child.start()
    print(f"{plan.stream}: {plan.sources:,} sources x {plan.numbers:,} numbers, {plan.chunk:,} a round every "
          f"{plan.round_ms} ms, {processes} processes, growth {plan.growth or 'default'}, error budget "
          f"{settings.error_budget}", flush=True)  # fmt: skip
    try:
        barrier.wait(_WAIT_S)  # every source is built
        started = time.monotonic()
        worst = 0.0
        for checkpoint in plan.checkpoints:
            barrier.wait(_WAIT_S)
            time.sleep(plan.settle_ms / 1000)
            worst = max(worst, check(settings, plan, checkpoint, f"round {checkpoint}"))
            barrier.wait(_WAIT_S)
        reports = [results.get(timeout=_WAIT_S) for _ in children]
    except BaseException:
        barrier.abort()  # the processes stop too, rather than wait for a check that will not come
        for child in children:
            child.kill()
        raise
    for child in children:
        child.join(60)
    elapsed = time.monotonic() - started
    total = plan.sources * plan.numbers
    final = wait_for_record(settings, lambda r: r.n >= total, 120)
    if final is None or final.n != total:
        raise SystemExit(f"final record n={final.n if final else None}, expected {total}")
    worst = max(worst, check(settings, plan, plan.rounds, "end"))
    traffic = topic_traffic(settings)
    snapshots = np.array([s for r in reports for s in r["snapshots"]])
    sent_bytes = sum(r["bytes"] for r in reports)
    result = {
        "stream": plan.stream,
        "bytes_per_number": traffic["values"] / total,
        "bytes_per_number_with_keys": (traffic["values"] + traffic["keys"]) / total,
        "sent_bytes_per_number": sent_bytes / total,
        "snapshots_per_source": float(snapshots.mean()),
        "snapshots_p50_max": (int(np.median(snapshots)), int(snapshots.max())),
        "heartbeats_per_source": traffic["heartbeats"] / plan.sources,
        "snapshots_per_s": traffic["mean_rate"],
        "peak_snapshots_per_s": traffic["peak_rate"],
        "worst_share_of_bound": worst,
        "elapsed_s": elapsed,
        "failed": sum(r["failed"] for r in reports),
    }
    print(f"  bytes/number {result['bytes_per_number']:.4f} (with keys {result['bytes_per_number_with_keys']:.4f}; "
          f"floor {(traffic['values'] / max(traffic['snapshots'], 1)) / plan.numbers:.4f}), "
          f"snapshots/source {result['snapshots_per_source']:.2f} (median {result['snapshots_p50_max'][0]}, "
          f"max {result['snapshots_p50_max'][1]}), heartbeats/source {result['heartbeats_per_source']:.2f}, "
          f"aggregator {result['snapshots_per_s']:.0f} snapshots/s (peak {result['peak_snapshots_per_s']}), "
          f"worst {worst:.2f} of bound, {elapsed:.0f} s, undelivered {result['failed']}", flush=True)  # fmt: skip
    return result


def source_cost(calls: int = 2_000, repeats: int = 7) -> tuple[float, float]:
    """Seconds per call of add_many of 1,000 numbers through a source's state, and of a bare KLL update.

    Each in its own loop over the same arrays, the loops alternating, the median of the repeats: timed
    side by side in one loop, the first of the two pays the array's cache misses (a bare update
    measured 25.9 us first and 18.5 us second).
    """
    import threading  # noqa: PLC0415

    import datasketches  # noqa: PLC0415

    from pipeline.core.source_state import SourceState  # noqa: PLC0415

    rng = np.random.default_rng(3)
    arrays = [rng.normal(0.0, 1.0, 1_000) for _ in range(64)]
    state = SourceState("cost")  # what SketchingSource.add_many runs, under its lock
    lock = threading.Lock()
    ours, theirs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(calls):
            with lock:
                state.add_many(arrays[i % len(arrays)])
            if i % 200 == 199:
                state.next_message(int(time.time() * 1000))  # the sender's tick: the budget's check
        ours.append((time.perf_counter() - started) / calls)
        bare = datasketches.kll_doubles_sketch(200)
        started = time.perf_counter()
        for i in range(calls):
            bare.update(arrays[i % len(arrays)])
        theirs.append((time.perf_counter() - started) / calls)
    return float(np.median(ours)), float(np.median(theirs))


def single_cost(count: int = 200_000) -> tuple[float, float]:
    """Seconds per number: ``SketchingSource.add`` (state + lock) against a bare ``update`` of one float."""
    import threading  # noqa: PLC0415

    import datasketches  # noqa: PLC0415

    from pipeline.core.source_state import SourceState  # noqa: PLC0415

    values = np.random.default_rng(4).normal(0.0, 1.0, count).tolist()
    state, lock, bare = SourceState("cost"), threading.Lock(), datasketches.kll_doubles_sketch(200)
    started = time.perf_counter()
    for x in values:  # as SketchingSource.add does it
        lock.acquire()
        try:
            state.add(x)
        finally:
            lock.release()
    state.drain()
    ours = (time.perf_counter() - started) / count
    started = time.perf_counter()
    for x in values:
        bare.update(x)
    return ours, (time.perf_counter() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=1_000)
    parser.add_argument("--numbers", type=int, default=100_000, help="numbers per source")
    parser.add_argument("--chunk", type=int, default=1_000, help="numbers a source adds per round")
    parser.add_argument("--round-ms", type=int, default=200)
    parser.add_argument("--settle-ms", type=int, default=1_000, help="pause before a checkpoint's check")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--streams", default="same,spread")
    parser.add_argument("--growth", type=float, default=None, help="the sources' growth cap (default: the library's)")
    parser.add_argument("--error-budget", type=float, default=None, help="theta (default: the setting's, 0.005)")
    args = parser.parse_args()
    rounds = args.numbers // args.chunk
    checkpoints = tuple(sorted({max(rounds // 10, 1), max(rounds // 4, 1), max(rounds // 2, 1)}))
    ours, bare = source_cost()
    one, one_bare = single_cost()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"cost at the source: add_many(1,000) {ours * 1e6:.1f} us, bare KLL update {bare * 1e6:.1f} us, "
          f"ratio {ours / bare:.2f}; add(x) {one * 1e9:.0f} ns, bare update(x) {one_bare * 1e9:.0f} ns, "
          f"ratio {one / one_bare:.2f}", flush=True)  # fmt: skip
    with ExitStack() as stack:
        tmp, bootstrap = bench_environment(stack, "dmedian-bench-sources-")
        for stream in filter(None, args.streams.split(",")):  # --streams "": the cost at the source only
            plan = Plan(stream, args.sources, args.numbers, args.chunk, args.round_ms, args.settle_ms, checkpoints,
                        args.growth, args.error_budget)  # fmt: skip
            run_stream(stack, tmp, bootstrap, plan, args.processes)


if __name__ == "__main__":
    main()
