#!/usr/bin/env python3
"""The shard's per-batch path in-process, per emission rule: what the budget costs per number.

No Kafka, one core, CPU time of this process (so other work on the machine disturbs
it little). What the shard agent does with one partition's batch, timed:
``ingest_batch`` (skip check, decode, one KLL update), ``EmissionState.observe``
(the budget's counts), ``rule.should_emit`` and, when it says so, the snapshot's
bytes and ``mark_emitted`` (a new grid). Not timed: the aggregator, simulated so
that the shards see records as in a worker (a publish after each round of batches
that brought a snapshot, fed back with ``see``); the clock runs at ``--rate``, so the
interval rule sends as often as it would at that input rate. The rules are built from the
default settings (``emission_rule = budget``), with only the rule's name changed.

Also printed: decode alone and a KLL update of the same numbers (the floor:
nothing the worker does per number can be cheaper than the sketch update).

    .venv/bin/python scripts/bench_ingest.py
    .venv/bin/python scripts/bench_ingest.py --numbers 4000000 --batch 100 --streams drift
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import datasketches
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import Settings, load_settings
from pipeline.core.budget import GlobalView
from pipeline.core.codec import CodecOptions, decode_batch
from pipeline.core.emission import RuleName, ShardEmissionRule, build_shard_rule
from pipeline.core.ingest import RecordBatch, ingest_batch
from pipeline.core.merge import GlobalEstimator
from pipeline.core.sketch import ShardState
from pipeline.core.wire import MedianRecord, SketchSnapshot
from pipeline.kafka.generate import MessageFormat, encode_messages

FORMATS = {"single": (MessageFormat.SINGLE, 1), "json-array-1000": (MessageFormat.JSON_ARRAY, 1000),
           "float64-1000": (MessageFormat.FLOAT64, 1000)}  # fmt: skip


def rule_from_settings(settings: Settings, name: RuleName) -> ShardEmissionRule:
    """The worker's shard rule (as ``pipeline.app.factory`` builds it), with rule ``name``."""
    return build_shard_rule(name, interval_ms=settings.emit_interval_ms, theta=settings.error_budget,
                            heartbeat_ms=settings.heartbeat_ms, growth=settings.geometric_growth,
                            shards_hint=settings.numbers_partitions, quantiles=settings.quantiles)  # fmt: skip


def make_values(stream: str, numbers: int, seed: int) -> npt.NDArray[np.float64]:
    """The input in arrival order: stationary lognormal, or a normal whose mean drifts 0 to 5 sigma."""
    rng = np.random.default_rng(seed)
    if stream == "stationary":
        return rng.lognormal(0.0, 1.0, numbers)
    return rng.normal(np.linspace(0.0, 5.0, numbers), 1.0)


def run(
    rule_name: RuleName, messages: list[bytes], per_batch: int, shards: int, settings: Settings, rate: float
) -> dict[str, float]:
    """Seconds in the timed shard path, numbers ingested and snapshots sent, for one rule."""
    rule = rule_from_settings(settings, rule_name)
    codec = CodecOptions()
    states = [ShardState.empty(i, settings.sketch_k) for i in range(shards)]
    emission = [rule.new_state() for _ in range(shards)]
    estimator = GlobalEstimator(settings.sketch_k, settings.quantiles)
    theta = settings.error_budget if rule_name == "budget" else None
    offsets = [0] * shards
    timed, snapshots, numbers, now_ms = 0.0, 0, 0, 0
    batches = [messages[i : i + per_batch] for i in range(0, len(messages), per_batch)]
    for round_start in range(0, len(batches), shards):
        sent = False
        for shard, values in enumerate(batches[round_start : round_start + shards]):
            batch = RecordBatch(range(offsets[shard], offsets[shard] + len(values)), values, [None] * len(values))
            offsets[shard] += len(values)
            now_ms = int(numbers / rate * 1000)  # the simulated clock: numbers arrive at ``rate``
            started = time.process_time()
            state = states[shard]
            result = ingest_batch(state, batch, codec)
            emission[shard].observe(state.n, state.last_offset, result.accepted_values, now_ms)
            payload = b""
            if rule.should_emit(emission[shard], now_ms):
                payload = SketchSnapshot.from_state(state, now_ms, rule.urgent(emission[shard])).to_bytes()
                emission[shard].mark_emitted(now_ms, state.sketch)
            timed += time.process_time() - started
            numbers += result.accepted
            if payload:
                snapshots += 1
                sent = True
                estimator.offer(SketchSnapshot.from_bytes(payload))
        if sent:  # the aggregator publishes; every shard sees the record before its next batch
            view = GlobalView.from_record(MedianRecord.from_json(estimator.record(now_ms, theta).to_json()))
            for state_of_shard in emission:
                state_of_shard.see(view)
    return {"seconds": timed, "numbers": numbers, "snapshots": snapshots}


def floor_costs(messages: list[bytes], per_batch: int, k: int) -> tuple[float, float]:
    """Seconds to decode every batch, and to KLL-update their numbers (one update per batch)."""
    batches = [messages[i : i + per_batch] for i in range(0, len(messages), per_batch)]
    started = time.process_time()
    decoded = [decode_batch(batch).values for batch in batches]
    decode_s = time.process_time() - started
    sketch = datasketches.kll_doubles_sketch(k)
    started = time.process_time()
    for values in decoded:
        sketch.update(values)
    return decode_s, time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numbers", type=int, default=20_000_000, help="numbers per case (single: a tenth)")
    parser.add_argument("--batch", type=int, action="append", help="messages per partition batch (repeatable)")
    parser.add_argument("--formats", default="float64-1000,json-array-1000,single")
    parser.add_argument("--streams", default="stationary,drift")
    parser.add_argument("--shards", type=int, default=8, help="partitions, fed round robin")
    parser.add_argument("--repeats", type=int, default=3, help="runs per rule; the fastest counts")
    parser.add_argument("--rate", type=float, default=10e6, help="simulated input rate, numbers/s (the clock)")
    args = parser.parse_args()
    settings = load_settings(environ={})
    rules: tuple[RuleName, ...] = (settings.emission_rule, "interval") if settings.emission_rule != "interval" else (
        "interval", "budget")  # fmt: skip
    print(f"defaults: emission_rule={settings.emission_rule}, theta={settings.error_budget}, "
          f"growth={settings.geometric_growth}, k={settings.sketch_k}, quantiles={settings.quantiles}, "
          f"{args.shards} shards round robin, a clock of {args.rate:,.0f} numbers/s; CPU ns per number, "
          f"fastest of {args.repeats}")  # fmt: skip
    print(f"{'format':<16}{'stream':<11}{'batch':>13}{'decode':>8}{'KLL':>7}"
          + "".join(f"{rule:>10}{'snaps':>7}" for rule in rules) + f"{'budget vs interval':>20}")  # fmt: skip
    for name in args.formats.split(","):
        fmt, size = FORMATS[name]
        repeats = args.repeats
        numbers = args.numbers // 10 if fmt is MessageFormat.SINGLE else args.numbers
        for stream in args.streams.split(","):
            messages = list(encode_messages(make_values(stream, numbers, seed=3), fmt, size))
            for per_batch in args.batch or ([10_000] if fmt is MessageFormat.SINGLE else [10, 100]):
                decode_s, kll_s = floor_costs(messages, per_batch, settings.sketch_k)
                cells, ns = [], {}
                for rule in rules:
                    runs = [run(rule, messages, per_batch, args.shards, settings, args.rate) for _ in range(repeats)]
                    best = min(runs, key=lambda r: r["seconds"])
                    ns[rule] = best["seconds"] / best["numbers"] * 1e9
                    cells.append(f"{ns[rule]:>10.1f}{int(best['snapshots']):>7}")
                cost = ns["budget"] / ns["interval"] - 1
                label = f"{per_batch * size:,} numbers"
                print(f"{name:<16}{stream:<11}{label:>13}{decode_s / numbers * 1e9:>8.1f}{kll_s / numbers * 1e9:>7.1f}"
                      + "".join(cells) + f"{cost:>+19.1%}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
