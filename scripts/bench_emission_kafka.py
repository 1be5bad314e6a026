#!/usr/bin/env python3
"""Emission rules through Kafka, next to bench_emission.py's in-process figures for the same stream.

For each rule (``emission_rule``), with a fresh app id and topics: one worker
runs while a stationary lognormal stream of float64 blocks is produced at a
steady ``--rate``, round robin over the partitions (every shard gets the same
numbers): first one block per shard (the worker starts meanwhile), then the rest
in ``--checkpoints`` chunks. After each chunk we wait for the ``medians`` record
whose ``n`` is everything produced so far and rank its served values exactly
against all of it. Then the whole ``sketches`` topic is read
(snapshots and heartbeats: key + value bytes per ingested number, messages per
shard) and the whole ``medians`` topic: every record is ranked against exactly
the numbers it covers (replaying ``sketches`` in order gives each shard's count
in the record, i.e. the first n_s numbers of shard s), and against the numbers
of the record that replaced it (each shard had ingested at least those while the
record stood; the budget rule's ``rank_bound`` covers them, the other rules bound
nothing about unsent numbers).

bench_emission.py's simulation then runs for the same stream size, shards, rule
and worker settings. Its clock is simulated at ``--rate``; the Kafka run is real
time. A pause makes every shard flush what is unsent after ``emit_interval_ms``
(a checkpoint cannot come otherwise), which the simulation, never pausing, does
not do: such snapshots are counted apart ("pause"), but they also reset the
growth and budget counts. So the default is one chunk (the only pause is at the
end); the replay audits every record exactly without pausing, and each
checkpoint's audit is reproduced from it as a self-check.

    .venv/bin/python scripts/bench_emission_kafka.py                   # 4e6 numbers, 16 partitions (about 1 minute)
    .venv/bin/python scripts/bench_emission_kafka.py --checkpoints 4   # also 3 checkpoints mid-stream
    .venv/bin/python scripts/bench_emission_kafka.py --numbers 1000000 --rules budget
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import numpy.typing as npt
from bench_emission import RULES, Options, Result, Simulation
from bench_pipeline import bench_environment, start_worker, worker_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import OFFSET_BEGINNING, TopicPartition  # noqa: E402

from config import Settings, load_settings  # noqa: E402
from pipeline.core.codec import encode_float64_block  # noqa: E402
from pipeline.core.exact import check_rank  # noqa: E402
from pipeline.core.wire import MedianRecord, ShardProgress, SketchSnapshot, parse_sketches_value  # noqa: E402
from pipeline.kafka.clients import admin_client, consumer, producer  # noqa: E402
from pipeline.kafka.follow import latest_snapshots, wait_for_record  # noqa: E402
from pipeline.kafka.generate import Distribution, generate  # noqa: E402
from pipeline.kafka.produce import produce_values  # noqa: E402
from topics import topic_set  # noqa: E402
from topics.admin import create_topics  # noqa: E402

__all__ = ["main"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class StreamPlan:
    """The numbers, in production order, and how they are cut into blocks, partitions and chunks."""

    values: FloatArray
    """Every number, in the order produced (block j goes to partition j mod partitions)."""
    partitions: int
    """Input partitions (shards)."""
    block: int
    """Numbers per float64 block message."""
    chunks: int
    """Chunks produced one after the other, with a checkpoint after each."""

    def shard(self, s: int) -> FloatArray:
        """Shard ``s``'s numbers in offset order."""
        return self.values.reshape(-1, self.block)[s :: self.partitions].ravel()

    def chunk_ends(self) -> list[int]:
        """Numbers produced after each chunk (whole rounds of one block per shard: equal shards at checkpoints).

        The first chunk is one round: every shard's first snapshot then holds one block, as in the
        simulation, instead of whatever piled up while the worker started.
        """
        rounds = self.values.size // (self.partitions * self.block) - 1
        ends = [1 + rounds * (c + 1) // self.chunks for c in range(self.chunks)]
        return [end * self.partitions * self.block for end in (1, *ends)]


@dataclass
class KafkaRun:
    """What one rule's run through Kafka left behind."""

    rule: str
    growth: float
    """The worker's ``geometric_growth``."""
    checkpoints: list[tuple[int, MedianRecord, FloatArray, float]] = field(default_factory=list)
    """(numbers produced, the record with that n, its rank errors per quantile, seconds from end of chunk)."""
    produce_seconds: float = 0.0
    sent_at: list[float] = field(default_factory=list)
    """When each message was handed to the producer (monotonic seconds): a stall here is ours, not the worker's."""
    sketches: list[tuple[bytes, bytes]] = field(default_factory=list)
    records: list[MedianRecord] = field(default_factory=list)


def read_topic(settings: Settings, topic: str, timeout_s: float = 120.0) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of partition 0 of ``topic``, from the beginning to its current end."""
    client = consumer(settings, f"bench-read-{uuid.uuid4().hex[:8]}", enable_partition_eof=False)
    tp = TopicPartition(topic, 0, OFFSET_BEGINNING)
    low, high = client.get_watermark_offsets(tp, timeout=10)
    client.assign([tp])
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while high > low and time.monotonic() < deadline:
            message = client.poll(1.0)
            if message is None or message.error():
                continue
            out.append((message.key() or b"", message.value() or b""))
            if (message.offset() or 0) >= high - 1:
                break
    finally:
        client.close()
    if len(out) != high - low:
        raise SystemExit(f"{topic}: read {len(out)} of {high - low} records")
    return out


def stamped(messages: Sequence[bytes], stamps: list[float]) -> Iterator[bytes]:
    """``messages``, noting the time each is taken."""
    for message in messages:
        stamps.append(time.monotonic())
        yield message


def diagnose(settings: Settings, log: Path, per_shard: int) -> str:
    """Why a checkpoint never came: the shards whose latest snapshot falls short, and the worker log's tail."""
    short = [f"shard {shard}: n={snapshot.n:,} last_offset={snapshot.last_offset}"
             for shard, snapshot in sorted(latest_snapshots(settings).items()) if snapshot.n != per_shard]  # fmt: skip
    tail = log.read_text(errors="replace").splitlines()[-25:]
    return "\n".join([f"latest snapshots short of n={per_shard:,}:", *short, "worker log, last lines:", *tail])


def run_rule(bootstrap: str, tmp: Path, rule: str, plan: StreamPlan, rate: float, extra: dict[str, str]) -> KafkaRun:
    """Produce the stream in chunks while one worker runs ``rule``; audit each checkpoint; read both topics."""
    run_id = f"emission-{rule}-{uuid.uuid4().hex[:6]}"
    env = worker_env(bootstrap, run_id, tmp, {"numbers_partitions": str(plan.partitions), "emission_rule": rule}
                     | extra)  # fmt: skip
    settings = load_settings(environ=env)
    create_topics(admin_client(settings), topic_set(settings))
    result = KafkaRun(rule, settings.geometric_growth)
    messages = [encode_float64_block(block) for block in plan.values.reshape(-1, plan.block)]
    with (tmp / f"{run_id}.log").open("wb") as log:
        worker = start_worker(env, log)
        try:
            client = producer(settings)
            # Connect before the clock starts, so the first chunk goes out at the rate, not in one burst.
            client.list_topics(settings.topic_numbers, timeout=30)
            produced = 0
            for end in plan.chunk_ends():
                first, last = produced // plan.block, end // plan.block

                def round_robin(sequence: int, first: int = first) -> int:
                    return (first + sequence - 1) % plan.partitions  # sequence is 1-based

                def covers_all(record: MedianRecord, end: int = end) -> bool:
                    return record.n >= end

                started = time.monotonic()
                produce_values(client, settings.topic_numbers, stamped(messages[first:last], result.sent_at),
                               rate=rate / plan.block, partition=round_robin)  # fmt: skip
                result.produce_seconds += time.monotonic() - started
                produced, chunk_done = end, time.monotonic()
                # The first wait includes the worker's start.
                timeout_s = 300 if produced == plan.chunk_ends()[0] else 120
                record = wait_for_record(settings, covers_all, timeout_s, lambda: worker.poll() is not None)
                if record is None or record.n != end:
                    last_n = record.n if record else 0
                    raise SystemExit(f"{rule}: no record with n={end:,} within {timeout_s} s (last n={last_n:,})\n"
                                     + diagnose(settings, Path(log.name), end // plan.partitions))  # fmt: skip
                ordered = np.sort(plan.values[:end])
                errors = np.array([check_rank(ordered, e.q, e.band.value).rank_error for e in record.quantiles])
                result.checkpoints.append((end, record, errors, time.monotonic() - chunk_done))
        finally:
            worker.terminate()
            worker.wait(60)
    result.sketches = read_topic(settings, settings.topic_sketches)
    result.records = [MedianRecord.from_json(value) for _, value in read_topic(settings, settings.topic_medians)]
    admin_client(settings).delete_topics([spec.name for spec in topic_set(settings)])
    return result


class CoveredRanks:
    """Exact ranks in the numbers a record covers: the first n_s numbers of every shard s."""

    def __init__(self, shards: Sequence[FloatArray]) -> None:
        self._shards = shards
        self._sorted: list[FloatArray] = [np.empty(0) for _ in shards]

    def advance(self, counts: Sequence[int]) -> None:
        """Cover the first ``counts[s]`` numbers of each shard (counts never shrink along the records)."""
        for s, n in enumerate(counts):
            held = self._sorted[s]
            if n < held.size:
                raise ValueError(f"shard {s}: a later record covers fewer numbers ({n} < {held.size})")
            if n > held.size:
                merged = np.concatenate([held, np.sort(self._shards[s][held.size : n])])
                merged.sort(kind="stable")  # two sorted runs: a linear merge
                self._sorted[s] = merged

    def rank_errors(self, record: MedianRecord) -> FloatArray:
        """Distance from each served quantile's q to its value's true rank interval in the covered numbers."""
        qs = np.array([e.q for e in record.quantiles])
        xs = np.array([e.band.value for e in record.quantiles])
        n = sum(a.size for a in self._sorted)
        below = sum(np.searchsorted(a, xs, side="left") for a in self._sorted) / n
        at_or_below = sum(np.searchsorted(a, xs, side="right") for a in self._sorted) / n
        return np.asarray(np.maximum(np.maximum(below - qs, qs - at_or_below), 0.0), dtype=np.float64)


def covered_counts(snapshots: Sequence[SketchSnapshot], records: Sequence[MedianRecord],
                   partitions: int) -> list[tuple[int, ...] | None]:  # fmt: skip
    """Each record's count per shard: the aggregator read ``sketches`` in order, so a record reflects a
    prefix of it; each snapshot raises its shard's count, so the prefix whose sum is ``n`` is unique
    (None: no prefix sums to the record's n, which would be a bug)."""
    held: list[tuple[int, int]] = [(-2, -1)] * partitions  # (last_offset, n), compared like GlobalEstimator.offer
    total, i, out = 0, 0, []
    for record in records:
        while total < record.n and i < len(snapshots):
            snapshot, i = snapshots[i], i + 1
            if (snapshot.last_offset, snapshot.n) < held[snapshot.shard]:
                continue
            total += snapshot.n - max(held[snapshot.shard][1], 0)
            held[snapshot.shard] = (snapshot.last_offset, snapshot.n)
        out.append(tuple(max(n, 0) for _, n in held) if total == record.n else None)
    return out


def snapshot_causes(snapshots: Sequence[SketchSnapshot], at_pause: set[int], rule: str, growth: float) -> list[str]:
    """Why each snapshot was sent, from its shard's counts, in the rules' order of checks: its first,
    ``growth`` times the previous count (budget and geometric), a checkpoint's count (the input paused:
    the simulation, which never pauses, has none of these), else the rule's own reason."""
    previous: dict[int, int] = {}
    causes = []
    for snapshot in snapshots:
        before = previous.get(snapshot.shard)
        if before is None:
            cause = "first"
        elif rule != "interval" and snapshot.n >= growth * before:
            cause = "growth"
        elif snapshot.n in at_pause:
            cause = "pause"
        else:
            cause = "interval" if rule == "interval" else "budget/answer" if rule == "budget" else "other"
        causes.append(cause)
        previous[snapshot.shard] = snapshot.n
    return causes


@dataclass
class Figures:
    """One row of the table."""

    bytes_per_number: float
    bytes_excl_pauses: float
    snapshots: float
    pause_flushes: float
    heartbeats: float
    records: int
    worst: FloatArray
    stated: float
    held: bool
    worst_own: float | None
    worst_next: float
    next_bound: float
    next_held: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class RecordAudit:
    """Records ranked against their own numbers and against the numbers of the record that replaced them."""

    own: float = 0.0
    next: float = 0.0
    next_bound: float = 0.0
    next_held: bool = True
    reproduced: int = 0
    """Checkpoint audits (against all produced) that came out the same from the replay: a self-check."""


def audit_records(run: KafkaRun, plan: StreamPlan, counts: Sequence[tuple[int, ...] | None]) -> tuple[
        RecordAudit, RecordAudit]:  # fmt: skip
    """Audits of the records before the first checkpoint (not every shard in them yet), and from it on."""
    ranks = CoveredRanks([plan.shard(s) for s in range(plan.partitions)])
    at_checkpoints = {(r.n, r.ts): errors for _, r, errors, _ in run.checkpoints}
    early, late = RecordAudit(), RecordAudit()
    previous: MedianRecord | None = None
    for record, count in zip(run.records, counts, strict=True):
        if count is None:
            continue
        ranks.advance(count)
        own = ranks.rank_errors(record)
        audit = late if record.n >= plan.chunk_ends()[0] else early
        audit.own = max(audit.own, float(own.max()))
        expected = at_checkpoints.get((record.n, record.ts))
        audit.reproduced += expected is not None and bool(np.allclose(own, expected, rtol=0, atol=1e-12))
        if previous is not None:
            # The record just replaced, against numbers every shard had ingested while it stood.
            audit = late if previous.n >= plan.chunk_ends()[0] else early
            errors = ranks.rank_errors(previous)
            bounds = np.array([previous.bound_of(e) for e in previous.quantiles])
            audit.next = max(audit.next, float(errors.max()))
            audit.next_bound = max(audit.next_bound, float(bounds.max()))
            audit.next_held &= bool((errors <= bounds + 1e-12).all())
        previous = record
    return early, late


def kafka_figures(run: KafkaRun, plan: StreamPlan) -> Figures:
    """Bytes and messages on ``sketches``; the checkpoints; every record against its own and the next numbers."""
    numbers, shards, ends = plan.values.size, plan.partitions, plan.chunk_ends()
    parsed = [(len(key) + len(value), len(key), parse_sketches_value(value)) for key, value in run.sketches]
    sent = [(size, m) for size, _, m in parsed if isinstance(m, SketchSnapshot)]
    snapshots = [m for _, m in sent]
    causes = snapshot_causes(snapshots, {end // shards for end in ends[1:]}, run.rule, run.growth)
    total_bytes = sum(size for size, _, _ in parsed)
    paused_bytes = sum(size for (size, _), cause in zip(sent, causes, strict=True) if cause == "pause")
    first_n = [s.n for s, cause in zip(snapshots, causes, strict=True) if cause == "first"]
    misnumbered = sum(s.n != (s.last_offset + 1) * plan.block for s in snapshots)
    # A shard never sends one state twice; a repeat (same shard and n) is a resend, identical bytes a retry.
    repeats = len(snapshots) - len({(s.shard, s.n) for s in snapshots})
    retries = len(run.sketches) - len(set(run.sketches))
    falls = [(a, b) for a, b in pairwise(run.records) if b.n < a.n]
    drops = [a.n - b.n for a, b in falls]
    # Snapshots of one shard in topic order that go back in time or in n: two sends of one shard overlapped.
    by_shard = [[x for x in snapshots if x.shard == shard] for shard in range(shards)]
    backwards = sum(b.ts < a.ts or b.n < a.n for seq in by_shard for a, b in pairwise(seq))
    counts = covered_counts(snapshots, run.records, shards)
    early, audit = audit_records(run, plan, counts)
    worst = np.max([errors for _, _, errors, _ in run.checkpoints], axis=0)
    stated = np.array([[r.bound_of(e) for e in r.quantiles] for _, r, _, _ in run.checkpoints])
    held = all((errors <= b + 1e-12).all() for (_, _, errors, _), b in zip(run.checkpoints, stated, strict=True))
    # Within the last chunk (no pause in it): the longest time between two messages handed to the producer,
    # and between two snapshots of one shard (the worker's timestamps): stalls of ours, or of the worker.
    produce_gap = float(np.diff(run.sent_at[ends[-2] // plan.block :]).max()) * 1000
    times = sorted((s.shard, s.ts) for s in snapshots if s.n > ends[0] // shards)
    gaps = [b[1] - a[1] for a, b in pairwise(times) if a[0] == b[0]]
    notes = [
        f"produced {numbers:,} numbers in {run.produce_seconds:.1f} s ({numbers / run.produce_seconds:,.0f}/s)"
        f"; the record with n = produced came {', '.join(f'{c[3]:.1f}' for c in run.checkpoints)} s after each chunk",
        f"{len(run.sketches):,} messages on sketches ({sum(k for _, k, _ in parsed):,} B of keys), {len(run.records)} "
        f"records on medians ({sum(c is None for c in counts)} match no prefix of sketches; n fell {len(drops)} "
        f"times, by up to {max(drops, default=0):,}"
        + "".join(f"; n {a.n:,} ts {a.ts} then n {b.n:,} ts {b.ts}" for a, b in falls[:3])
        + f"); {backwards} snapshots going back in ts or n after their shard's previous one; {misnumbered} snapshots "
        f"with n != (last_offset + 1) x {plan.block}, {repeats} repeating a shard's n ({retries} identical "
        f"messages); {early.reproduced + audit.reproduced} of {len(run.checkpoints)} "
        f"checkpoint audits reproduced by the replay; first snapshots at n = {min(first_n):,} to {max(first_n):,}",
        f"longest gap between two messages produced {produce_gap:.0f} ms; between two snapshots of a shard "
        f"{max(gaps, default=0):,} ms (median {np.median(gaps) if gaps else 0:.0f} ms)",
        f"records before every shard reported: worst {early.own:.2%} against their own numbers, {early.next:.2%} "
        f"against the next record's (bound {early.next_bound:.2%}, held {'yes' if early.next_held else 'NO'})",
        "snapshots per shard by cause (inferred from each shard's counts): "
        + ", ".join(f"{c} {causes.count(c) / shards:.1f}" for c in sorted(set(causes))),
    ]
    return Figures(
        total_bytes / numbers, (total_bytes - paused_bytes) / numbers, len(snapshots) / shards,
        causes.count("pause") / shards, sum(isinstance(m, ShardProgress) for *_, m in parsed) / shards,
        len(run.records), worst, float(stated.max()), held, audit.own, audit.next, audit.next_bound, audit.next_held,
        notes,
    )  # fmt: skip


def simulated_figures(rule: str, plan: StreamPlan, settings: Settings, rate: float, batch: int, seed: int) -> Figures:
    """bench_emission.py's simulation of the same stream size, shards, rule and settings."""
    opts = Options(
        plan.values.size, plan.partitions, batch, int(rate * settings.publish_interval_ms / 1000), rate,
        settings.error_budget, settings.heartbeat_ms, settings.geometric_growth, settings.emit_interval_ms,
        settings.sketch_k, settings.quantiles, 5.0, 3.0, seed,
    )  # fmt: skip
    rule_name = next(r for r in RULES if r == rule)
    r: Result = Simulation(rule_name, "stationary", opts).run()
    worst = np.array([r.worst.get(q, np.nan) for q in settings.quantiles])
    return Figures(
        r.bytes_per_number, r.bytes_per_number, r.snapshots / plan.partitions, 0.0, r.heartbeats / plan.partitions,
        r.publishes, worst, r.stated, r.violations == 0, None, r.worst_standing, r.stated, r.violations == 0,
        ["simulated snapshots per shard by cause: "
         + ", ".join(f"{c} {k / plan.partitions:.1f}" for c, k in sorted(r.causes.items()))],
    )  # fmt: skip


def row(rule: str, source: str, f: Figures) -> str:
    worst = "/".join(f"{w:.2%}" for w in f.worst)
    own = "-" if f.worst_own is None else f"{f.worst_own:.2%}"
    return (f"{rule:<9} {source:<5} {f.bytes_per_number:>8.4f} {f.bytes_excl_pauses:>9.4f} {f.snapshots:>8.1f} "
            f"{f.pause_flushes:>6.1f} {f.heartbeats:>6.1f} {f.records:>7} {worst:>20} {f.stated:>7.2%} "
            f"{'yes' if f.held else 'NO':>4} {own:>7} {f.worst_next:>7.2%} {f.next_bound:>7.2%} "
            f"{'yes' if f.next_held else 'NO':>4}")  # fmt: skip


def ratio_row(rule: str, kafka: Figures, sim: Figures) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    return (f"{rule:<9} {'ratio':<5} {ratio(kafka.bytes_per_number, sim.bytes_per_number):>8} "
            f"{ratio(kafka.bytes_excl_pauses, sim.bytes_per_number):>9} {ratio(kafka.snapshots, sim.snapshots):>8} "
            f"{'':>6} {'':>6} {ratio(kafka.records, sim.records):>7}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--numbers", type=int, default=4_000_000, help="numbers per rule (rounded down to whole rounds of blocks)")
    add("--rate", type=float, default=1_000_000.0, help="numbers/s produced (and the simulation's clock)")
    add("--partitions", type=int, default=16)
    add("--block", type=int, default=1000, help="numbers per float64 block message")
    add("--checkpoints", type=int, default=1, help="chunks after the first round, each followed by an exact audit")
    add("--rules", default="budget,geometric,interval")
    add("--sim-batch", type=int, default=1000, help="the simulation's numbers per shard per batch")
    add("--seed", type=int, default=11)
    add("--logs", type=Path, help="copy each run's worker log into this directory")
    add("--set", action="append", default=[], metavar="SETTING=VALUE", help="a worker setting (both sides)")
    args = parser.parse_args()
    rules = args.rules.split(",")
    if unknown := [r for r in rules if r not in RULES]:
        parser.error(f"unknown rules {unknown}")
    if args.checkpoints < 1:
        parser.error("--checkpoints must be at least 1")
    extra = dict(item.split("=", 1) for item in args.set)
    per_round = args.partitions * args.block
    numbers = args.numbers // per_round * per_round
    plan = StreamPlan(generate(Distribution.LOGNORMAL, numbers, args.seed), args.partitions, args.block,
                      args.checkpoints)  # fmt: skip
    with ExitStack() as stack:
        tmp, bootstrap = bench_environment(stack, "dmedian-emission-")
        settings = load_settings(environ=worker_env(bootstrap, "probe", tmp, extra))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.2f} at start, Python {platform.python_version()}, broker {bootstrap}")  # fmt: skip
        print(f"{numbers:,} lognormal numbers in float64 blocks of {args.block:,}, round robin over "
              f"{args.partitions} partitions, {args.rate:,.0f} numbers/s, {args.checkpoints} chunks; theta="
              f"{settings.error_budget}, growth={settings.geometric_growth}, heartbeat {settings.heartbeat_ms} ms, "
              f"interval {settings.emit_interval_ms} ms, publish {settings.publish_interval_ms} ms, k="
              f"{settings.sketch_k}; simulation: batches of {args.sim_batch:,} per shard{'; ' if extra else ''}"
              f"{extra or ''}")  # fmt: skip
        header = (f"{'rule':<9} {'src':<5} {'B/number':>8} {'excl.':>9} {'snap/shd':>8} {'pause':>6} {'hb/shd':>6} "
                  f"{'records':>7} {'worst p50/p90/p99':>20} {'stated':>7} {'held':>4} {'own':>7} {'vs next':>7} "
                  f"{'bound':>7} {'held':>4}")  # fmt: skip
        rows, notes = [], []
        for rule in rules:
            started = time.monotonic()
            try:
                run = run_rule(bootstrap, tmp, rule, plan, args.rate, extra)
            finally:
                if args.logs:
                    args.logs.mkdir(parents=True, exist_ok=True)
                    for log in tmp.glob(f"emission-{rule}-*.log"):
                        shutil.copy(log, args.logs)
            kafka = kafka_figures(run, plan)
            sim = simulated_figures(rule, plan, settings, args.rate, args.sim_batch, args.seed)
            rows += [row(rule, "kafka", kafka), row(rule, "sim", sim), ratio_row(rule, kafka, sim)]
            notes += [f"{rule}: {note}" for note in (*kafka.notes, *sim.notes)]
            print(f"{rule}: done in {time.monotonic() - started:.0f} s", flush=True)
        print(header, *rows, sep="\n")
        print("worst = worst true rank error per quantile at the checkpoints (kafka: each record with n = produced, "
              "against all produced; sim: its checkpoints); stated = the largest rank_bound there; own = every "
              "record against exactly its own numbers; vs next = every record against the numbers of the record "
              "that replaced it (sim: 'before'), and its rank_bound", *notes, sep="\n")  # fmt: skip


if __name__ == "__main__":
    main()
