#!/usr/bin/env python3
"""Emission rules compared in-process: bytes on ``sketches`` against the rank error served.

No Kafka: the shards and the aggregator run the exact code the agents call
(ShardState.apply, the rule and its EmissionState, SketchSnapshot.to_bytes /
from_bytes, ShardProgress, GlobalEstimator, ShardLiveness, MedianRecord JSON, and
GlobalView fed back to every shard after each publish). Time is simulated: the
input arrives at ``--rate`` numbers/s spread evenly over the shards, in batches of
``--batch`` numbers per shard, and the aggregator publishes every
``--publish-every`` numbers (200 ms at the default rate, like publish_interval_ms),
and at once after an urgent snapshot (every snapshot of the budget rule; a publish
after the round of batches stands for "at once").

After a publish the shards see the record (the budget rule's shards may answer
with a snapshot, and the aggregator then publishes again at once); the record left
standing is the checkpoint: its served values are ranked exactly against every
number ingested so far (all of them kept, sorted in blocks), and so is the record
a publish is about to replace. Printed per rule and stream: bytes per ingested
number, snapshots and heartbeats per shard, the worst true rank error per quantile
(at checkpoints), as first published ("unconf", before the shards saw it) and just
before being replaced ("before"), the stated bound, and whether every audit held
its stated bound and eps + theta.

    .venv/bin/python scripts/bench_emission.py                     # 1e8 numbers, 16 shards (3 minutes)
    .venv/bin/python scripts/bench_emission.py --numbers 4000000   # a quick look
    .venv/bin/python scripts/bench_emission.py --rules interval --interval-ms 1600   # 100k numbers per shard

The plot needs matplotlib: .venv/bin/pip install -e ".[bench]". Every number is kept for
the exact ranks: 8 bytes each (0.8 GB at 1e8, about 1.1 GB at the peak of a block merge).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.budget import GlobalView, ShardLiveness
from pipeline.core.emission import EmissionState, RuleName, ShardEmissionRule, build_shard_rule
from pipeline.core.merge import GlobalEstimator
from pipeline.core.sketch import ShardState
from pipeline.core.wire import MedianRecord, ShardProgress, SketchSnapshot

RULES: tuple[RuleName, ...] = ("interval", "geometric", "budget")
STREAMS = ("stationary", "drift", "step")
EXTRA_STREAMS = ("skewed",)
MAX_BLOCK = 1 << 25  # exact-rank blocks stop merging here (256 MB), to cap the memory of one merge


@dataclass(frozen=True)
class Options:
    """One benchmark configuration."""

    numbers: int
    shards: int
    batch: int
    publish_every: int
    rate: float
    theta: float
    heartbeat_ms: int
    growth: float
    interval_ms: int
    k: int
    quantiles: tuple[float, ...]
    drift: float
    step: float
    seed: int
    throttled: bool = False


class ExactRanks:
    """Every number so far, in sorted blocks of geometrically decreasing size (an LSM of arrays)."""

    def __init__(self) -> None:
        self.blocks: list[npt.NDArray[np.float64]] = []
        self.n = 0

    def add(self, values: npt.NDArray[np.float64]) -> None:
        self.blocks.append(np.sort(values))
        self.n += values.size
        while len(self.blocks) > 1 and self.blocks[-2].size <= 2 * self.blocks[-1].size:
            if self.blocks[-2].size + self.blocks[-1].size > MAX_BLOCK:
                break
            merged = np.concatenate(self.blocks[-2:])
            merged.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
            self.blocks[-2:] = [merged]

    def rank_error(
        self, quantiles: npt.NDArray[np.float64], values: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """Distance from each q to its value's true rank interval [below, at or below] / n."""
        below = sum(np.searchsorted(block, values, side="left") for block in self.blocks)
        at_or_below = sum(np.searchsorted(block, values, side="right") for block in self.blocks)
        errors = np.maximum(np.maximum(below / self.n - quantiles, quantiles - at_or_below / self.n), 0.0)
        return np.asarray(errors, dtype=np.float64)


def stream_round(
    kind: str, rng: np.random.Generator, shape: tuple[int, int], progress: float, opts: Options
) -> npt.NDArray[np.float64]:
    """One round of input: ``shape`` = (shards, batch), at ``progress`` in [0, 1) of the stream."""
    if kind == "stationary":
        return rng.lognormal(0.0, 1.0, shape)
    if kind == "drift":
        return rng.normal(opts.drift * progress, 1.0, shape)
    if kind == "step":
        return rng.normal(opts.step if progress >= 0.5 else 0.0, 1.0, shape)
    if kind == "skewed":  # stationary, but shard i has its own mean (keys routed by value range)
        return rng.normal(np.linspace(0.0, opts.step, shape[0])[:, None], 1.0, shape)
    raise ValueError(kind)


@dataclass
class Result:
    """What one run measured."""

    rule: str
    stream: str
    numbers: int = 0
    snapshot_bytes: int = 0
    snapshots: int = 0
    heartbeat_bytes: int = 0
    heartbeats: int = 0
    publishes: int = 0
    republishes: int = 0
    checkpoints: int = 0
    violations: int = 0
    target_violations: int = 0
    worst: dict[float, float] = field(default_factory=dict)
    worst_unconfirmed: float = 0.0
    worst_standing: float = 0.0
    causes: dict[str, int] = field(default_factory=dict)
    stated: float = 0.0
    target: float = 0.0
    seconds: float = 0.0
    curve_n: list[int] = field(default_factory=list)
    curve_error: list[float] = field(default_factory=list)
    curve_bytes: list[float] = field(default_factory=list)

    @property
    def bytes_per_number(self) -> float:
        return (self.snapshot_bytes + self.heartbeat_bytes) / max(self.numbers, 1)


class Simulation:
    """Shards, aggregator and exact audit of one (rule, stream) run."""

    def __init__(self, rule_name: RuleName, stream: str, opts: Options) -> None:
        self.opts = opts
        self.rule: ShardEmissionRule = build_shard_rule(
            rule_name, interval_ms=opts.interval_ms, theta=opts.theta, heartbeat_ms=opts.heartbeat_ms,
            growth=opts.growth, shards_hint=opts.shards, quantiles=opts.quantiles,
        )  # fmt: skip
        self.budget = rule_name == "budget"
        self.shards = [ShardState.empty(i, opts.k) for i in range(opts.shards)]
        self.emission: list[EmissionState] = [self.rule.new_state() for _ in range(opts.shards)]
        self.estimator = GlobalEstimator(opts.k, opts.quantiles)
        self.liveness = ShardLiveness()
        self.exact = ExactRanks()
        self.result = Result(rule_name, stream)
        self.stream = stream
        self.seen_a_view = False
        self.changed = False
        self.urgent = False

    # --- the shard side ------------------------------------------------------------------------

    def send_snapshot(self, i: int, now_ms: int, urgent: bool) -> None:
        data = SketchSnapshot.from_state(self.shards[i], now_ms, urgent).to_bytes()
        self.result.snapshot_bytes += len(data)
        self.result.snapshots += 1
        received = SketchSnapshot.from_bytes(data)  # the aggregator's side of the wire
        self.estimator.offer(received)
        self.liveness.note_snapshot(received)
        self.changed = True
        self.urgent |= received.urgent
        self.emission[i].mark_emitted(now_ms, self.shards[i].sketch)

    def send_heartbeat(self, i: int, now_ms: int) -> None:
        state, emission = self.shards[i], self.emission[i]
        data = ShardProgress(i, max(emission.emitted_n, 0), state.n, state.last_offset, now_ms).to_bytes()
        self.result.heartbeat_bytes += len(data)
        self.result.heartbeats += 1
        self.liveness.note_progress(ShardProgress.from_bytes(data))
        emission.mark_heartbeat(now_ms)

    def tick(self, i: int, now_ms: int, answering: bool = False) -> bool:
        """What the agent does after a batch and on its timer: a snapshot, a heartbeat, or nothing."""
        if self.rule.should_emit(self.emission[i], now_ms):
            cause = self.cause(self.emission[i], answering)
            self.result.causes[cause] = self.result.causes.get(cause, 0) + 1
            self.send_snapshot(i, now_ms, self.rule.urgent(self.emission[i]))
            return True
        if self.rule.should_heartbeat(self.emission[i], now_ms):
            self.send_heartbeat(i, now_ms)
        return False

    def cause(self, emission: EmissionState, answering: bool) -> str:
        """Why the rule sent (for the report; mirrors the rules' order of checks)."""
        if emission.emitted_n < 0 or (emission.emitted_n == 0 and emission.n > 0):
            return "first"
        if self.result.rule == "interval":
            return "interval"
        if emission.n >= self.opts.growth * emission.emitted_n:
            return "growth"
        return "answer" if answering else "budget"

    # --- the aggregator side -------------------------------------------------------------------

    def publish(self, now_ms: int) -> MedianRecord:
        """Publish, let every shard see the record, and publish again while any of them answers."""
        stale = len(self.liveness.stale(now_ms, 2 * self.opts.heartbeat_ms))
        theta = self.opts.theta if self.budget else None
        for attempt in range(self.opts.shards + 2):
            self.changed = False
            record = MedianRecord.from_json(
                self.estimator.record(now_ms, theta, self.liveness.pending(), stale).to_json()
            )
            self.result.publishes += 1
            self.result.republishes += attempt > 0
            if attempt == 0 and self.seen_a_view:
                # As first published, before the shards have seen it (and perhaps answered).
                errors = self.audit(record)
                self.result.worst_unconfirmed = max(self.result.worst_unconfirmed, float(errors.max()))
            view = GlobalView.from_record(record)
            self.seen_a_view |= view is not None
            answered = False
            for i, emission in enumerate(self.emission):
                emission.see(view)
                answered |= self.tick(i, now_ms, answering=True)
            if not (answered and self.budget):
                return record
        return record

    def audit(self, record: MedianRecord) -> npt.NDArray[np.float64]:
        qs = np.array([0.5, *(e.q for e in record.quantiles)])
        values = np.array([record.median.value, *(e.band.value for e in record.quantiles)])
        return self.exact.rank_error(qs, values)

    def check(self, record: MedianRecord) -> npt.NDArray[np.float64]:
        """Audit ``record`` now against its stated bound and against eps + theta; count violations."""
        errors = self.audit(record)
        bounds = np.array([record.rank_bound, *(record.bound_of(e) for e in record.quantiles)])
        target = record.rank_error + self.opts.theta
        r = self.result
        r.checkpoints += 1
        r.violations += int((errors > bounds + 1e-12).any())
        r.target_violations += int((errors > target + 1e-12).any())
        r.stated = max(r.stated, float(bounds.max()))
        r.target = max(r.target, target)
        return errors

    def checkpoint(self, record: MedianRecord) -> None:
        errors = self.check(record)
        r = self.result
        for e, err in zip(record.quantiles, errors[1:], strict=True):
            r.worst[e.q] = max(r.worst.get(e.q, 0.0), float(err))
        r.curve_n.append(self.exact.n)
        r.curve_error.append(float(errors.max()))
        r.curve_bytes.append((r.snapshot_bytes + r.heartbeat_bytes) / self.exact.n)

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> Result:
        opts = self.opts
        rng = np.random.default_rng(opts.seed)
        rounds = opts.numbers // (opts.shards * opts.batch)
        started = time.perf_counter()
        since_publish = 0
        standing: MedianRecord | None = None
        for round_index in range(rounds):
            block = stream_round(self.stream, rng, (opts.shards, opts.batch), round_index / rounds, opts)
            self.exact.add(block.ravel())
            ingested = (round_index + 1) * opts.shards * opts.batch
            now_ms = int(ingested / opts.rate * 1000)
            for i, shard in enumerate(self.shards):
                shard.apply(block[i], round_index)  # one source record per batch: offset = round
                self.emission[i].observe(shard.n, shard.last_offset, block[i], now_ms)
                self.tick(i, now_ms)
            since_publish += opts.shards * opts.batch
            if since_publish >= opts.publish_every or (self.urgent and not opts.throttled):
                since_publish = 0
                self.urgent = False
                # Like the aggregator: publish (at most every publish interval) only when a snapshot came.
                if self.changed:
                    if standing is not None:
                        # The record consumers still read, just before the next one replaces it.
                        errors = self.check(standing)
                        self.result.worst_standing = max(self.result.worst_standing, float(errors.max()))
                    standing = self.publish(now_ms)
                if standing is not None:
                    self.checkpoint(standing)
        self.result.numbers = rounds * opts.shards * opts.batch
        self.result.seconds = time.perf_counter() - started
        return self.result


def report(r: Result, opts: Options) -> str:
    worst = "/".join(f"{r.worst.get(q, float('nan')):.2%}" for q in opts.quantiles)
    held = "yes" if r.violations == 0 else f"NO ({r.violations} of {r.checkpoints})"
    target = "yes" if r.target_violations == 0 else f"no ({r.target_violations} of {r.checkpoints})"
    return (
        f"{r.stream:<10} {r.rule:<9} {r.bytes_per_number:>9.4f} {r.snapshots / opts.shards:>9.1f} "
        f"{r.heartbeats / opts.shards:>6.1f} {worst:>20} {r.worst_unconfirmed:>7.2%} {r.worst_standing:>7.2%} "
        f"{r.stated:>7.2%} "
        f"{held:>10} {target:>10} {r.publishes:>6}/{r.republishes:<5} {r.seconds:>6.1f}s"
    )


def causes(r: Result, opts: Options) -> str:
    per_shard = ", ".join(f"{cause} {count / opts.shards:.1f}" for cause, count in sorted(r.causes.items()))
    return f"{'':<10} {r.rule:<9} snapshots per shard by cause: {per_shard}"


def plot(results: list[Result], path: Path, opts: Options) -> None:
    import matplotlib  # noqa: PLC0415 (optional: the bench extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    streams = [s for s in (*STREAMS, *EXTRA_STREAMS) if any(r.stream == s for r in results)]
    fig, axes = plt.subplots(2, len(streams), figsize=(5 * len(streams), 7), squeeze=False, sharex=True)
    colours = {"interval": "tab:red", "geometric": "tab:orange", "budget": "tab:blue"}
    for col, stream in enumerate(streams):
        top, bottom = axes[0][col], axes[1][col]
        for r in (r for r in results if r.stream == stream):
            label = f"{r.rule} ({r.bytes_per_number:.3g} B/number)"
            top.plot(r.curve_n, r.curve_error, color=colours[r.rule], lw=0.8, label=label)
            bottom.plot(r.curve_n, r.curve_bytes, color=colours[r.rule], lw=1.2, label=r.rule)
        target = max((r.target for r in results if r.stream == stream), default=0.0)
        top.axhline(target, color="black", ls="--", lw=0.8, label=f"bound eps+theta = {target:.2%}")
        top.set_title(f"{stream}: worst true rank error at each record")
        top.set_yscale("log")
        top.set_ylim(1e-5, 0.5)
        top.legend(fontsize=7)
        bottom.set_title("bytes on sketches per ingested number (cumulative)")
        bottom.set_yscale("log")
        bottom.set_xscale("log")
        bottom.set_xlabel("numbers ingested")
        bottom.legend(fontsize=7)
    fig.suptitle(
        f"{opts.shards} shards, theta={opts.theta}, k={opts.k}, interval {opts.interval_ms} ms, "
        f"growth {opts.growth}, heartbeat {opts.heartbeat_ms} ms, {opts.rate:,.0f} numbers/s"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add: Callable[..., object] = parser.add_argument
    add("--numbers", type=int, default=100_000_000, help="numbers per stream")
    add("--shards", type=int, default=16)
    add("--batch", type=int, default=5_000, help="numbers per shard per batch")
    add("--publish-every", type=int, default=200_000, help="numbers between two publishes")
    add("--rate", type=float, default=1_000_000.0, help="simulated input rate, numbers/s (the clock)")
    add("--theta", type=float, default=0.005)
    add("--heartbeat-ms", type=int, default=10_000)
    add("--growth", type=float, default=2.0)
    add("--interval-ms", type=int, default=200)
    add("--k", type=int, default=200)
    add("--drift", type=float, default=5.0, help="drift stream: the mean moves from 0 to this (sigma = 1)")
    add("--step", type=float, default=3.0, help="step stream: the mean jumps to this at half way (skewed: spread)")
    add("--rules", default=",".join(RULES))
    add("--streams", default=",".join(STREAMS), help=f"of {', '.join((*STREAMS, *EXTRA_STREAMS))}")
    add("--seed", type=int, default=7)
    add("--plot", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "emission.png")
    add("--no-plot", action="store_true")
    add("--throttled", action="store_true", help="publish only every --publish-every, even after urgent snapshots")
    args = parser.parse_args()
    opts = Options(
        args.numbers, args.shards, args.batch, args.publish_every, args.rate, args.theta, args.heartbeat_ms,
        args.growth, args.interval_ms, args.k, (0.5, 0.9, 0.99), args.drift, args.step, args.seed, args.throttled,
    )  # fmt: skip
    per_shard_interval = opts.rate / opts.shards * opts.interval_ms / 1000
    print(
        f"{opts.numbers:,} numbers per stream over {opts.shards} shards, batches of {opts.batch:,}, a publish every "
        f"{opts.publish_every:,} numbers, {opts.rate:,.0f} numbers/s; theta={opts.theta}, growth={opts.growth}, "
        f"heartbeat {opts.heartbeat_ms} ms, interval {opts.interval_ms} ms (= {per_shard_interval:,.0f} numbers "
        f"per shard), k={opts.k}"
    )
    print(
        f"{'stream':<10} {'rule':<9} {'B/number':>9} {'snap/shd':>9} {'hb/shd':>6} "
        f"{'worst err p50/p90/p99':>20} {'unconf':>7} {'before':>7} {'stated':>7} {'held':>10} {'eps+theta':>10} "
        f"{'publ/re':>12} {'time':>7}"
    )
    results = []
    for stream in args.streams.split(","):
        for rule in args.rules.split(","):
            if rule not in RULES:
                parser.error(f"unknown rule {rule!r}")
            result = Simulation(rule, stream, opts).run()
            results.append(result)
            print(report(result, opts), flush=True)
    print("causes: first = a shard's first numbers; growth = count x growth; budget = budget spent after a batch;")
    print("        answer = budget spent against a record just received (the aggregator publishes again at once)")
    for result in results:
        print(causes(result, opts))
    if not args.no_plot:
        plot(results, args.plot, opts)


if __name__ == "__main__":
    main()
