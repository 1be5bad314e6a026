#!/usr/bin/env python3
"""The shard service's flush timer: what one tick costs with 10 idle shards, and with 10,000.

Drives the real :class:`~pipeline.app.shards.ShardService` (its ``_flush``, the
timer's body) on a real ``faust.App`` that is never started, with default settings
and the default (budget) rule. No Kafka: the shard table is a dict holding each
shard's stored state, the ``sketches`` topic a sink that counts what it is given, and
time is simulated (the tick's clock), so a run takes seconds. Each shard is
assigned, announced (its restored state read and its first snapshot sent), and then
idle: no numbers, nothing unsent.

Printed per shard count: the ticks the announcements took and the longest of them;
the cost of a tick when no shard is due (what an idle shard adds to every tick: the
goal is a ratio of at most 2 between 10,000 and 10); and the mean cost of a tick
over one heartbeat period, which includes the heartbeats every idle shard still
sends once per ``heartbeat_ms`` (their number grows with the shards: about
shards x tick / heartbeat_ms per tick). Last, every shard gets 500 new numbers
(unsent: a busy worker) and a newer ``medians`` record arrives, moved a little: the
ticks it took to re-check every shard against it (at most ``PER_TICK`` a tick) and the
longest of them, with the snapshots the re-checks sent. The sink's send is free here;
through Kafka each message costs a producer send on top.

    .venv/bin/python scripts/bench_ticks.py
    .venv/bin/python scripts/bench_ticks.py --shards 10 1000 10000 --ticks 5000

``per_tick_cost(shards)`` is imported by ``scripts/bench_many_shards.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faust
from faust.types.tuples import TP

from config import load_settings
from pipeline.app.global_view import MediansFollower
from pipeline.app.shards import ShardService, shard_key
from pipeline.core.emission import build_shard_rule
from pipeline.core.sketch import QuantileBand, ShardState
from pipeline.core.wire import MedianRecord, QuantileEstimate

START_MS = 1_700_000_000_000


@dataclass
class _Sink:
    """Stands in for the ``sketches`` topic: counts the messages the service sends."""

    messages: int = 0

    async def send(self, *, key: bytes, value: bytes) -> None:  # noqa: ARG002 (the topic's signature)
        self.messages += 1


@dataclass
class _Clock:
    now_ms: int = START_MS

    def __call__(self) -> int:
        return self.now_ms


@dataclass(frozen=True)
class TickFigures:
    """One shard count's figures."""

    shards: int
    idle_s: float
    """Seconds per tick when no shard is due."""
    period_s: float
    """Seconds per tick, mean over one heartbeat period (heartbeats included)."""
    heartbeats_per_tick: float
    """Messages sent per tick over that period."""
    announce_ticks: int
    """Ticks it took to announce every shard's restored state."""
    announce_max_s: float
    """The longest of those ticks, seconds."""
    tick_ms: int
    """The timer's interval."""
    recheck_ticks: int = 0
    """Ticks it took to re-check every busy shard against a newer record."""
    recheck_max_s: float = 0.0
    """The longest of those ticks, seconds."""
    recheck_sent: int = 0
    """Snapshots those re-checks sent."""


def _service(shards: int) -> tuple[ShardService, _Clock, _Sink, int, int]:
    settings = load_settings(environ={})
    app = faust.App("bench-ticks", autodiscover=False, web_enabled=False)
    rule = build_shard_rule(
        settings.emission_rule,
        interval_ms=settings.emit_interval_ms,
        theta=settings.error_budget,
        heartbeat_ms=settings.heartbeat_ms,
        growth=settings.geometric_growth,
        shards_hint=shards,
        quantiles=settings.quantiles,
    )
    # Each shard restored with a thousand numbers, as after a takeover.
    rng = np.random.default_rng(7)
    table: dict[bytes, bytes] = {}
    for shard in range(shards):
        state = ShardState.empty(shard, settings.sketch_k)
        state.apply(rng.normal(0.0, 1.0, 1_000), 999)
        table[shard_key(shard)] = state.to_bytes()
    clock, sink = _Clock(), _Sink()
    service = ShardService(app, settings, table, sink, None, rule, MediansFollower(settings), clock)  # type: ignore[arg-type]
    tick_ms = max(settings.emit_interval_ms // 4, 10)
    return service, clock, sink, tick_ms, settings.heartbeat_ms


async def _run(shards: int, ticks: int) -> TickFigures:
    service, clock, sink, tick_ms, heartbeat_ms = _service(shards)
    assigned = {TP(service._numbers_topic, shard) for shard in range(shards)}
    await service._on_assigned(service._app, assigned)
    # Announce every shard (a bounded number per tick), then every one is idle.
    announce_ticks, announce_max_s = 0, 0.0
    while sink.messages < shards:
        started = time.perf_counter()
        await service._flush()
        announce_max_s = max(announce_max_s, time.perf_counter() - started)
        announce_ticks += 1
        clock.now_ms += tick_ms
    # A tick with nothing due: the clock stands still just after the announcements.
    # Best of three runs: the machine is shared, and the first run warms the caches.
    idle_s = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(ticks):
            await service._flush()
        idle_s = min(idle_s, (time.perf_counter() - started) / ticks)
    # One heartbeat period of ticks: every shard heartbeats once in it.
    before, period_ticks = sink.messages, heartbeat_ms // tick_ms
    started = time.perf_counter()
    for _ in range(period_ticks):
        clock.now_ms += tick_ms
        await service._flush()
    period_s = (time.perf_counter() - started) / period_ticks
    sent = (sink.messages - before) / period_ticks
    recheck = await _recheck(service, clock, sink)
    return TickFigures(shards, idle_s, period_s, sent, announce_ticks, announce_max_s, tick_ms, *recheck)


async def _recheck(service: ShardService, clock: _Clock, sink: _Sink) -> tuple[int, float, int]:
    # Every shard busy (500 unsent numbers, as its batches would leave them), then a newer record.
    rng = np.random.default_rng(11)
    now_ms = clock()
    for shard in service.owned:
        slot = service._slots[shard]
        assert slot.state is not None
        values = rng.normal(0.0, 1.0, 500)
        slot.state.apply(values, slot.state.last_offset + values.size)
        slot.emission.observe(slot.state.n, slot.state.last_offset, values, now_ms)
        service._schedule.touched(shard, service._rule.next_due_ms(slot.emission), slot.emission.changed)
    median = QuantileBand(0.02, 0.0, 0.04)
    follower = service._follower
    follower.latest = MedianRecord(len(service.owned) * 1_500, len(service.owned), median, 0.01,
                                   (QuantileEstimate(0.5, median),), now_ms, theta=0.005)  # fmt: skip
    follower.records_read += 1
    ticks, longest, before = 0, 0.0, sink.messages
    service._latest_view()  # the record is noted: the shards with unsent numbers are queued
    while service._schedule.pending_rechecks:
        started = time.perf_counter()
        await service._flush()
        longest = max(longest, time.perf_counter() - started)
        ticks += 1
    return ticks, longest, sink.messages - before


def tick_figures(shards: int, ticks: int = 2_000) -> TickFigures:
    """Both figures for ``shards`` idle shards (runs its own event loop)."""
    return asyncio.run(_run(shards, ticks))


def per_tick_cost(shards: int) -> float:
    """Seconds one flush tick costs with ``shards`` idle shards, none of them due."""
    return tick_figures(shards).idle_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[10, 10_000], help="shard counts to compare")
    parser.add_argument("--ticks", type=int, default=2_000, help="idle ticks timed per shard count")
    args = parser.parse_args(argv)
    rows: list[TickFigures] = []
    for shards in args.shards:
        rows.append(tick_figures(shards, args.ticks))
    base = rows[0]
    print(f"{'shards':>8} {'announce ticks':>15} {'longest ms':>11} {'idle tick µs':>13} {'ratio':>7} "
          f"{'tick µs over a heartbeat period':>32} {'ratio':>7} {'messages/tick':>14}")  # fmt: skip
    for row in rows:
        print(
            f"{row.shards:>8,} {row.announce_ticks:>15} {row.announce_max_s * 1e3:>11.1f} "
            f"{row.idle_s * 1e6:>13.2f} {row.idle_s / base.idle_s:>7.2f} "
            f"{row.period_s * 1e6:>32.1f} {row.period_s / base.period_s:>7.2f} {row.heartbeats_per_tick:>14.2f}"
        )
    print(f"(timer interval {base.tick_ms} ms; sends cost nothing here)")
    print(f"{'shards':>8} {'re-check ticks':>15} {'longest ms':>11} {'snapshots sent':>15}")
    for row in rows:
        print(f"{row.shards:>8,} {row.recheck_ticks:>15} {row.recheck_max_s * 1e3:>11.1f} {row.recheck_sent:>15,}")


if __name__ == "__main__":
    main()
