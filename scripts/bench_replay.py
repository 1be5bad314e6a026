#!/usr/bin/env python3
"""How long the two replays take: from the input topic, and the aggregator from ``sketches``.

A live worker ingests ``--count`` numbers (JSON arrays of ``--batch``, or the
``--format`` given) until its record is exact; it is then stopped. Then:

- ``dmedian replay`` (a worker under a fresh app id reads the input from the
  beginning into its own topics until it has caught up), timed from the command's
  start to its exit, worker start-up included;
- ``dmedian replay --sketches`` (the latest snapshot of every shard merged, as a new
  aggregator does), timed the same way.

Both answers are checked against the live record (same n) and the exact median.

    .venv/bin/python scripts/bench_replay.py --count 10000000
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from bench_pipeline import bench_environment, deploy_worker, produce_with_progress, worker_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core.exact import check_rank  # noqa: E402
from pipeline.core.wire import MedianRecord  # noqa: E402
from pipeline.kafka.follow import wait_for_record  # noqa: E402
from pipeline.kafka.generate import Distribution, MessageFormat, encode_messages, generate  # noqa: E402


def _timed_cli(env: dict[str, str], *args: str) -> tuple[float, MedianRecord, str]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline", *args, "--json"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=3600, check=False)  # fmt: skip
    took = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"dmedian {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    said = [line for line in done.stderr.splitlines() if line.startswith(("caught up", "rebuilt from"))]
    return took, MedianRecord.from_json(done.stdout.encode()), said[-1] if said else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000_000, help="numbers in the input topic")
    parser.add_argument("--format", choices=[f.value for f in MessageFormat], default=MessageFormat.JSON_ARRAY.value)
    parser.add_argument("--batch", type=int, default=1000, help="numbers per message (batched formats)")
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    fmt = MessageFormat(args.format)
    with ExitStack() as stack:
        tmp, bootstrap = bench_environment(stack, "dmedian-bench-replay-")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.1f}, broker {bootstrap}, {args.partitions} partitions")  # fmt: skip
        run = f"replay-{uuid.uuid4().hex[:8]}"
        env = worker_env(bootstrap, run, tmp, {"numbers_partitions": str(args.partitions), "log_level": "warning"})
        settings, worker = deploy_worker(stack, env, tmp / f"{run}.log")
        values = generate(Distribution.LOGNORMAL, args.count, seed=31)
        started = time.monotonic()
        total = values.size if fmt is MessageFormat.SINGLE else -(-values.size // args.batch)
        messages = produce_with_progress(
            settings, settings.topic_numbers, encode_messages(values, fmt, args.batch), total
        )
        live = wait_for_record(settings, lambda r: r.n >= values.size, 1800, lambda: worker.poll() is not None)
        if live is None or live.n != values.size:
            raise SystemExit(f"the live worker did not reach n={values.size:,}")
        print(f"live: {values.size:,} numbers in {messages:,} {fmt.value} messages, "
              f"exact n after {time.monotonic() - started:.1f} s (produce included)")  # fmt: skip
        worker.terminate()
        worker.wait(60)

        ordered = np.sort(values)
        print(f"{'replay':<28}{'seconds':>9}{'numbers/s':>13}{'n':>14}{'median rank err':>17}{'bound':>8}")
        replays = (("from input (fresh app id)", ("replay",)), ("aggregator from sketches", ("replay", "--sketches")))
        for label, cli in replays:
            took, record, last_line = _timed_cli(env, *cli)
            if record.n != live.n:
                raise SystemExit(f"{label}: n={record.n:,}, live n={live.n:,}")
            error = check_rank(ordered, 0.5, record.median.value).rank_error
            print(f"{label:<28}{took:>9.1f}{values.size / took:>13,.0f}{record.n:>14,}{error:>17.5f}"
                  f"{record.rank_bound:>8.4f}")  # fmt: skip
            print(f"    {last_line}")


if __name__ == "__main__":
    main()
