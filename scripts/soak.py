#!/usr/bin/env python3
"""Soak: a long run near the maximum rate with a worker SIGKILLed every few minutes.

N workers (real ``python -m pipeline worker`` processes, each its own data dir)
consume a stream offered at a fixed rate (default 80% of a maximum measured by a
~20 s calibration run at the start) by a producer thread. Every ``--kill-every``
seconds one worker (round robin) gets SIGKILL and is restarted on the same data
dir, as a supervisor would. Every ~5 s a line: numbers produced (acknowledged),
the latest ``medians`` record's ``n``, the group's lag on the input topic
(committed offsets against high watermarks) and produced - n, and each worker's
RSS. At the end the producer stops and the run waits for ``n`` to equal the
numbers produced: exit code 0 only if it does. A PNG (and optionally a CSV) of
the samples is written.

    .venv/bin/python scripts/soak.py                          # 30 min, own broker, docs/soak.png
    .venv/bin/python scripts/soak.py --minutes 3 --kill-every 60 --out /tmp/soak.png
    KAFKA_BOOTSTRAP_SERVERS=host:9092 .venv/bin/python scripts/soak.py --max-rate 1500000
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_pipeline import bench_environment, worker_env
from soak_plot import Sample, plot_soak
from soak_support import (
    FORMATS,
    LatestRecord,
    PacedProducer,
    StreamFormat,
    WorkerSlot,
    delete_run_topics,
    group_lag,
    message_pool,
    rss_mb,
)
from soak_support import roll_segments_every as roll_segments

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import KafkaException  # noqa: E402

from config import Settings, load_settings  # noqa: E402
from pipeline.kafka.clients import admin_client  # noqa: E402
from topics import topic_set  # noqa: E402
from topics.admin import create_topics  # noqa: E402

__all__ = ["SoakOptions", "main"]

logger = logging.getLogger(__name__)

LOAD = 0.8  # the soak's share of the measured maximum
SAMPLE_S = 5.0
# The input keeps 5 minutes in 1-minute segments, so 30 minutes near the maximum
# rate do not fill the disk; a lag of 5 minutes would lose input (the "expired" count).
RETENTION_MS = 300_000
SEGMENT_MS = 60_000
BASELINE_S = 30.0  # a kill's "pre-kill lag" is the highest group lag in this window before it


@dataclass(frozen=True)
class SoakOptions:
    """What one soak run does."""

    minutes: float
    rate: float | None
    max_rate: float | None
    stream: StreamFormat
    kill_every: float
    workers: int
    partitions: int
    out: Path
    csv: Path | None
    calibrate_s: float
    drain_timeout_s: float


def deploy(stack: ExitStack, bootstrap: str, tmp: Path, opts: SoakOptions) -> tuple[Settings, list[WorkerSlot]]:
    """Fresh topics and app id, and ``opts.workers`` worker processes; ``stack`` stops them."""
    run = f"soak-{uuid.uuid4().hex[:8]}"
    env = worker_env(bootstrap, run, tmp, {"numbers_partitions": str(opts.partitions),
                                           "numbers_retention_ms": str(RETENTION_MS)})  # fmt: skip
    settings = load_settings(environ=env)
    create_topics(admin_client(settings), topic_set(settings))
    roll_segments(settings, SEGMENT_MS)
    # Registered first so that it runs last, once the workers are stopped.
    stack.callback(delete_run_topics, settings)
    slots = [WorkerSlot(f"{run}-w{i}", env, tmp / run / f"w{i}", tmp) for i in range(opts.workers)]
    for slot in slots:
        stack.callback(slot.stop)
    return settings, slots


def calibrate(bootstrap: str, tmp: Path, opts: SoakOptions, pool: list[bytes]) -> float:
    """Numbers/s the workers consume while the producer offers all it can (its own topics and workers)."""
    with ExitStack() as stack:
        settings, slots = deploy(stack, bootstrap, tmp, opts)
        stream = PacedProducer(settings, pool, opts.stream.batch, 0.0).start()
        stack.callback(stream.abort)
        deadline = time.monotonic() + 180
        while group_lag(settings).committed == 0:  # the workers' start-up is not part of the rate
            for slot in slots:
                slot.restart_if_dead()
            if time.monotonic() > deadline:
                raise SystemExit("calibration: the workers committed nothing within 180 s")
            time.sleep(1)
        time.sleep(5)  # and not the rebalance when the last worker joins
        times, committed, produced = [], [], []
        end = time.monotonic() + opts.calibrate_s
        while time.monotonic() < end:
            times.append(time.monotonic())
            committed.append(group_lag(settings).committed * opts.stream.batch)
            produced.append(stream.acked_numbers)
            time.sleep(1)
        # A fitted slope: commits land every few seconds, so two end points would be noisy.
        consumed_rate = float(np.polyfit(times, committed, 1)[0])
        offered_rate = float(np.polyfit(times, produced, 1)[0])
    print(f"calibration ({opts.calibrate_s:.0f} s, producer flat out): offered {offered_rate:,.0f} numbers/s, "
          f"consumed {consumed_rate:,.0f} numbers/s"
          + (" (the producer was the limit)" if consumed_rate > 0.95 * offered_rate else ""), flush=True)  # fmt: skip
    return consumed_rate


def print_sample(s: Sample) -> None:
    rss = " ".join(f"{v:7.1f}" for v in s.rss_mb)
    print(f"{s.t:7.0f}{s.produced:16,d}{s.n:16,d}{s.group_lag:14,d}{s.served_lag:14,d}{s.kills:6d}   {rss}",
          flush=True)  # fmt: skip


def recoveries(samples: Sequence[Sample], kill_times: Sequence[float]) -> list[float | None]:
    """Seconds from each kill until the group lag, past its peak, is back at its pre-kill level.

    None: not before the next kill; 0: the lag never rose above that level.
    """
    result: list[float | None] = []
    for i, kill in enumerate(kill_times):
        before = [s.group_lag for s in samples if kill - BASELINE_S <= s.t < kill]
        until = kill_times[i + 1] if i + 1 < len(kill_times) else math.inf
        after = [s for s in samples if kill < s.t < until]
        if not before or not after:
            result.append(None)
            continue
        peak = max(range(len(after)), key=lambda j: after[j].group_lag)
        if after[peak].group_lag <= max(before):
            result.append(0.0)
            continue
        back = next((s for s in after[peak:] if s.group_lag <= max(before)), None)
        result.append(back.t - kill if back else None)
    return result


def summarise(samples: Sequence[Sample], kill_times: Sequence[float], slots: Sequence[WorkerSlot],
              kill_slots: Sequence[int], produced: int, n: int) -> None:  # fmt: skip
    print(f"final: n {n:,} vs produced {produced:,}: "
          + ("EXACT" if n == produced else f"DIFFERENCE {n - produced:+,d}"))  # fmt: skip
    half = samples[-1].t / 2 if samples else 0.0
    for i, slot in enumerate(slots):
        series = [(s.t, s.rss_mb[i]) for s in samples if not math.isnan(s.rss_mb[i])]
        late = [v for t, v in series if t >= half]
        # Each restart starts a new process: peaks per life show growth a restart would hide.
        bounds = [0.0, *(k for k, slot_i in zip(kill_times, kill_slots, strict=True) if slot_i == i), math.inf]
        lives = [max((v for t, v in series if a <= t < b), default=math.nan) for a, b in itertools.pairwise(bounds)]
        restarted = any(half <= k for k, slot_i in zip(kill_times, kill_slots, strict=True) if slot_i == i)
        growth = f"{late[-1] - late[0]:+.1f} MB" if late else "n/a"
        print(f"worker {i}: max RSS {max(v for _, v in series):.1f} MB; over the last half {growth}"
              f"{' (restarted in between)' if restarted else ''}; peak per life "
              f"{', '.join(f'{v:.0f}' for v in lives if not math.isnan(v))} MB; "
              f"{slot.unexpected_exits} unexpected exits")  # fmt: skip
    worst_group = max(samples, key=lambda s: s.group_lag)
    worst_served = max(samples, key=lambda s: s.served_lag)
    print(f"max group lag {worst_group.group_lag:,} numbers at {worst_group.t:.0f} s; "
          f"max produced - n {worst_served.served_lag:,} at {worst_served.t:.0f} s; "
          f"input lost to retention {max(s.expired for s in samples):,}")  # fmt: skip
    for kill, slot_i, took in zip(kill_times, kill_slots, recoveries(samples, kill_times), strict=True):
        shown = "not before the next kill" if took is None else f"after {took:.0f} s" if took else "(never above it)"
        print(f"kill at {kill:5.0f} s (worker {slot_i}): group lag back at its pre-kill level {shown}")


def write_csv(path: Path, samples: Sequence[Sample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    workers = len(samples[0].rss_mb) if samples else 0
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["t_s", "produced", "n", "pending", "group_lag", "served_lag", "expired", "kills",
                      *(f"rss_mb_w{i}" for i in range(workers))])  # fmt: skip
        for s in samples:
            out.writerow([f"{s.t:.1f}", s.produced, s.n, s.pending, s.group_lag, s.served_lag, s.expired, s.kills,
                          *(f"{v:.1f}" for v in s.rss_mb)])  # fmt: skip


class SoakRun:
    """The stream, the workers and the samples of one soak run."""

    def __init__(self, opts: SoakOptions, settings: Settings, slots: list[WorkerSlot], stream: PacedProducer,
                 records: LatestRecord) -> None:  # fmt: skip
        self.opts, self.settings, self.slots, self.stream, self.records = opts, settings, slots, stream, records
        self.started = time.monotonic()
        self.samples: list[Sample] = []
        self.kill_times: list[float] = []
        self.kill_slots: list[int] = []
        self.stopped_at: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def sample(self) -> Sample:
        record, batch, last = self.records.record, self.opts.stream.batch, self.samples[-1] if self.samples else None
        try:
            lag = group_lag(self.settings)
            group, expired = lag.lag * batch, lag.expired * batch
        except KafkaException as exc:  # a busy broker: keep the previous figure rather than stop a long run
            logger.warning("lag not read: %s", exc)
            group, expired = (last.group_lag, last.expired) if last else (0, 0)
        sample = Sample(self.elapsed(), self.stream.acked_numbers, record.n if record else 0,
                        record.pending if record else 0, group, expired,
                        tuple(rss_mb(slot.pid) for slot in self.slots), len(self.kill_times))  # fmt: skip
        self.samples.append(sample)
        print_sample(sample)
        return sample

    def kill_next(self) -> None:
        victim = len(self.kill_times) % len(self.slots)
        self.slots[victim].kill_and_restart()
        self.kill_times.append(self.elapsed())
        self.kill_slots.append(victim)
        print(f"{self.kill_times[-1]:7.0f}  SIGKILL worker {victim}, restarted on its data dir", flush=True)

    def stream_with_kills(self) -> None:
        """Sample every SAMPLE_S and kill every kill_every seconds, restarting any worker that died by itself."""
        next_sample, next_kill, end = SAMPLE_S, self.opts.kill_every, self.opts.minutes * 60
        while (now := self.elapsed()) < end:
            time.sleep(max(min(next_sample, next_kill) - now, 0.0))
            if next_kill <= self.elapsed() < end:  # a kill as the stream stops would show no recovery
                self.kill_next()
                next_kill += self.opts.kill_every
            if self.elapsed() >= next_sample:
                self.sample()
                next_sample += SAMPLE_S
            for slot in self.slots:
                slot.restart_if_dead()

    def drain(self) -> tuple[int, int]:
        """Stop producing and wait for ``n`` to reach the numbers produced; (produced, final n)."""
        produced = self.stream.stop()
        print(f"{self.elapsed():7.0f}  producer stopped: {produced:,} numbers acknowledged; "
              f"waiting up to {self.opts.drain_timeout_s:.0f} s for n to reach it", flush=True)  # fmt: skip
        self.stopped_at = self.elapsed()
        deadline = time.monotonic() + self.opts.drain_timeout_s
        last = self.sample()
        while last.n < produced and time.monotonic() < deadline:
            time.sleep(SAMPLE_S)
            last = self.sample()
        return produced, last.n


def soak(opts: SoakOptions) -> bool:
    """Run the soak; True when the final ``n`` equals the numbers produced."""
    fmt = opts.stream
    with ExitStack() as stack:
        tmp, bootstrap = bench_environment(stack, "dmedian-soak-")
        why = ", the default, so that the Python producer is not the bottleneck" if fmt.name == "json" else ""
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; broker {bootstrap}; "
              f"{opts.workers} workers, {opts.partitions} partitions; format {fmt.name} "
              f"({fmt.batch} numbers per message{why})", flush=True)  # fmt: skip
        pool = message_pool(fmt)
        rate = opts.rate
        if rate is None:
            maximum = opts.max_rate if opts.max_rate is not None else calibrate(bootstrap, tmp, opts, pool)
            rate = LOAD * maximum
            print(f"rate: {LOAD:.0%} of {maximum:,.0f} = {rate:,.0f} numbers/s", flush=True)
        else:
            print(f"rate: {rate:,.0f} numbers/s (given)", flush=True)
        settings, slots = deploy(stack, bootstrap, tmp, opts)
        records = LatestRecord(settings).start()
        stack.callback(records.stop)
        stream = PacedProducer(settings, pool, fmt.batch, rate / fmt.batch).start()
        stack.callback(stream.abort)  # on an early exit; after stop() a no-op
        print(f"{'t (s)':>7}{'produced':>16}{'record n':>16}{'group lag':>14}{'produced-n':>14}{'kills':>6}   "
              f"RSS MB per worker", flush=True)  # fmt: skip
        run = SoakRun(opts, settings, slots, stream, records)
        run.stream_with_kills()
        produced, n = run.drain()
        summarise(run.samples, run.kill_times, slots, run.kill_slots, produced, n)
        print(f"load at the end {os.getloadavg()[0]:.1f}")
        title = (f"soak: {opts.minutes:g} min at {rate:,.0f} numbers/s ({fmt.name}), {opts.workers} workers, "
                 f"{opts.partitions} partitions, SIGKILL every {opts.kill_every:g} s; final n "
                 + ("EXACT" if n == produced else f"off by {n - produced:+,d}"))  # fmt: skip
        plot_soak(run.samples, run.kill_times, run.stopped_at, title, opts.out)
        print(f"plot: {opts.out}")
        if opts.csv is not None:
            write_csv(opts.csv, run.samples)
            print(f"samples: {opts.csv}")
        return n == produced


def parse_options(argv: Sequence[str] | None = None) -> SoakOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, help="numbers/s offered (default: 80%% of the maximum)")
    parser.add_argument("--max-rate", type=float, help="the maximum in numbers/s (default: measured by calibration)")
    parser.add_argument("--format", choices=[f.name for f in FORMATS], default="json",
                        help="single numbers, or JSON arrays / float64 blocks of 100 (default json)")  # fmt: skip
    parser.add_argument("--kill-every", type=float, default=180.0, help="seconds between SIGKILLs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("docs/soak.png"), help="the PNG")
    parser.add_argument("--csv", type=Path, help="also write the samples here")
    parser.add_argument("--calibrate-seconds", type=float, default=20.0)
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for n at the end")
    args = parser.parse_args(argv)
    return SoakOptions(
        minutes=args.minutes, rate=args.rate, max_rate=args.max_rate,
        stream=next(f for f in FORMATS if f.name == args.format), kill_every=args.kill_every,
        workers=args.workers, partitions=args.partitions, out=args.out, csv=args.csv,
        calibrate_s=args.calibrate_seconds, drain_timeout_s=args.drain_timeout,
    )  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(0 if soak(parse_options()) else 1)


if __name__ == "__main__":
    main()
