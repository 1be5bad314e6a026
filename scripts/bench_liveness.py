#!/usr/bin/env python3
"""What the aggregator's shard bookkeeping costs per publish at up to 10,000 shards.

In-process, one core, no Kafka. For each shard count S, two states of the shards:

* ``healthy``: every shard heartbeats every ``--heartbeat-ms`` (staggered), so between
  two publishes S * publish_ms / heartbeat_ms progress messages arrive; none is stale.
* ``stopped``: a worker stopped: no shard has been heard from for over two heartbeats,
  and none is until a takeover. Every one is stale on every publish.

Timed per publish: the progress messages since the last publish (``note_progress``)
and the stale count the record carries (what ``AggregatorService._publish_if_due``
asks: ``stale_count``, or ``len(stale(...))`` where there is no ``stale_count``).
Also timed: one walk of ``GlobalEstimator.shards()`` (what ``/shards`` and
``/metrics`` do per request) with every shard held.

    .venv/bin/python scripts/bench_liveness.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.liveness import ShardLiveness
from pipeline.core.merge import GlobalEstimator
from pipeline.core.sketch import ShardState
from pipeline.core.wire import ShardProgress, SketchSnapshot


def stale_count(liveness: ShardLiveness, now_ms: int, max_age_ms: int) -> int:
    """The count a publish puts in its record, by the call this checkout's aggregator makes."""
    count = getattr(liveness, "stale_count", None)
    return int(count(now_ms, max_age_ms)) if count else len(liveness.stale(now_ms, max_age_ms))


def per_publish(shards: int, stopped: bool, args: argparse.Namespace) -> tuple[float, int]:
    """Median seconds per publish (messages since the last one, then the stale count) and the last count."""
    liveness = ShardLiveness()
    heartbeat, publish = args.heartbeat_ms, args.publish_ms
    for shard in range(shards):  # the shards' first messages, staggered over one heartbeat
        liveness.note_progress(ShardProgress(shard, 0, 1, 0, ts=shard * heartbeat // shards))
    now_ms = 10 * heartbeat if stopped else heartbeat
    stale_count(liveness, now_ms, 2 * heartbeat)  # the first publish sees the change
    # The shards whose heartbeat falls in each publish interval of a heartbeat (not timed).
    slots: list[list[int]] = [[] for _ in range(-(-heartbeat // publish))]
    for shard in range(shards):
        slots[(shard * heartbeat // shards) // publish].append(shard)
    times, count, ingested = [], 0, 2
    for _ in range(args.publishes):
        beats = [] if stopped else slots[(now_ms % heartbeat) // publish]
        messages = [ShardProgress(shard, 0, ingested, 1, ts=now_ms) for shard in beats]
        started = time.perf_counter()
        for message in messages:
            liveness.note_progress(message)
        count = stale_count(liveness, now_ms, 2 * heartbeat)
        times.append(time.perf_counter() - started)
        now_ms += publish
        ingested += 1
    return statistics.median(times), count


def listing(shards: int) -> float:
    """Seconds for one walk of ``GlobalEstimator.shards()`` with ``shards`` held (median of 7)."""
    state = ShardState.empty(0, 200)
    estimator = GlobalEstimator(200, (0.5,))
    for shard in range(shards):
        state.shard = shard
        estimator.offer(SketchSnapshot.from_bytes(SketchSnapshot.from_state(state, ts=1).to_bytes()))
    times = []
    for _ in range(7):
        started = time.perf_counter()
        sum(1 for _ in estimator.shards())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, nargs="+", default=[100, 1000, 10_000])
    parser.add_argument("--heartbeat-ms", type=int, default=10_000)
    parser.add_argument("--publish-ms", type=int, default=200)
    parser.add_argument("--publishes", type=int, default=50, help="publishes timed per case (median)")
    args = parser.parse_args()
    print(f"heartbeat {args.heartbeat_ms} ms, a publish every {args.publish_ms} ms, median of {args.publishes}")
    print(f"{'shards':>7} {'state':>8} {'stale':>6} {'per publish':>12} {'shards() walk':>14}")
    for shards in args.shards:
        walk = listing(shards)
        for stopped in (False, True):
            seconds, count = per_publish(shards, stopped, args)
            state = "stopped" if stopped else "healthy"
            print(f"{shards:>7,} {state:>8} {count:>6,} {seconds * 1e6:>10.1f}us {walk * 1e3:>12.2f}ms")


if __name__ == "__main__":
    main()
