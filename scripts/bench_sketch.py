#!/usr/bin/env python3
"""In-process costs behind DESIGN.md: decode, sketch update, snapshot size, merge.

No Kafka: this measures the pure logic the agents call, one core.

    .venv/bin/python scripts/bench_sketch.py
    .venv/bin/python scripts/bench_sketch.py --max-n 1000000000     # snapshot size up to 1e9 (about a minute)
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import datasketches
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.codec import decode_batch
from pipeline.core.merge import GlobalEstimator
from pipeline.core.sketch import ShardState
from pipeline.core.wire import SketchSnapshot
from pipeline.kafka.generate import MessageFormat, encode_messages

_REPEATS = 5


def _offer_next_and_publish(estimator: GlobalEstimator, snapshots: Iterator[SketchSnapshot]) -> None:
    """One new snapshot in, one record out: the aggregator's work per snapshot when one shard changed."""
    if not estimator.offer(next(snapshots)):
        raise SystemExit("the benchmark's snapshot was not newer than the one held: nothing would be measured")
    estimator.record(0)


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-n", type=int, default=100_000_000, help="largest n for the snapshot sizes")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    values = rng.lognormal(3.0, 1.0, 1_000_000)

    print("decode (codec only, one call per 10,000 messages):")
    for fmt, batch in ((MessageFormat.SINGLE, 1), (MessageFormat.JSON_ARRAY, 1000), (MessageFormat.FLOAT64, 1000)):
        messages = list(encode_messages(values[: 10_000 * batch], fmt, batch))
        seconds = best_of(3, functools.partial(decode_batch, messages))
        rate = len(messages) / seconds
        print(f"  {fmt.value:<11} {rate:>14,.0f} msgs/s {rate * batch:>14,.0f} numbers/s")

    for k in (100, 200, 400):
        sketch = datasketches.kll_doubles_sketch(k)
        seconds = best_of(3, functools.partial(sketch.update, values))
        print(f"KLL k={k}: update {seconds / values.size * 1e9:.1f} ns/number (numpy array of 1e6), "
              f"rank error {sketch.normalized_rank_error(False):.4%}")  # fmt: skip

    print("snapshot size at k=200 (serialized sketch + envelope header):")
    state = ShardState.empty(0, 200)
    fed = 0
    chunk = rng.normal(size=1_000_000)
    for target in [t for t in (1_000, 100_000, 10_000_000, 100_000_000, 1_000_000_000) if t <= args.max_n]:
        while fed < target:
            step = min(target - fed, chunk.size)
            state.apply(chunk[:step], fed + step)
            fed += step
        snapshot = SketchSnapshot.from_state(state, 0)
        sketch_bytes, message_bytes = len(snapshot.sketch_bytes), len(snapshot.to_bytes())
        print(f"  n={target:>11,}: sketch {sketch_bytes:>6,} B, message {message_bytes:>6,} B, "
              f"retained {state.sketch.num_retained}")  # fmt: skip

    print("aggregator cost of one incoming snapshot (offer a newer snapshot of one shard + publish a record):")
    for shards in (8, 100, 1000):
        estimator = GlobalEstimator(200, (0.5, 0.9, 0.99))
        for shard in range(shards):
            s = ShardState.empty(shard, 200)
            s.apply(rng.normal(size=20_000), 1)
            estimator.offer(SketchSnapshot.from_state(s, 0))
        estimator.record(0)  # the first publish merges every shard; later ones only the changed path
        newer = []  # shard 0 again, each newer than the last: an older or equal one is dropped unmerged
        grown = ShardState.empty(0, 200)
        for offset in range(2, 2 + _REPEATS):
            grown.apply(rng.normal(size=20_000), offset)
            newer.append(SketchSnapshot.from_state(grown, 0))
        seconds = best_of(_REPEATS, functools.partial(_offer_next_and_publish, estimator, iter(newer)))
        print(f"  {shards:>5} shards: {seconds * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
