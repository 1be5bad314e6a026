#!/usr/bin/env python3
"""Worker memory over a long run at full rate: RSS, consumer lag and n, every 30 s.

One worker (default settings) consumes a stream produced as fast as this
machine allows next to it: single-number messages mixed with 100-number float64
blocks (so both the per-record path and the per-number path run), from a pool of
pre-encoded messages. The input topic keeps one minute of data, so a long run
does not fill the disk. Every interval it prints the worker's RSS (from
/proc), the group's lag on the input topic, and the served ``n`` against the
numbers produced so far; at the end, RSS growth from the first to the last
sample after warm-up.

    .venv/bin/python scripts/bench_memory.py --minutes 10
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from bench_pipeline import bench_environment, deploy_worker, worker_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import TopicPartition  # noqa: E402

from config import Settings  # noqa: E402
from pipeline.core.codec import encode_float64_block  # noqa: E402
from pipeline.kafka.clients import consumer, producer  # noqa: E402
from pipeline.kafka.follow import wait_for_record  # noqa: E402

BLOCK = 100  # numbers per float64 message
SINGLES_PER_BLOCK = 10  # single-number messages per block message


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _lag(settings: Settings) -> int:
    client = consumer(settings, settings.app_id)  # the worker's group: read its commits, commit nothing
    try:
        tps = [TopicPartition(settings.topic_numbers, p) for p in range(settings.numbers_partitions)]
        committed = client.committed(tps, timeout=10)
        ends = [client.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        return sum(end - max(tp.offset, 0) for tp, end in zip(committed, ends, strict=True))
    finally:
        client.close()


class _Producer:
    """Produces the mixed stream flat out from a thread; counts the numbers it sent."""

    def __init__(self, settings: Settings, rate: float) -> None:
        rng = np.random.default_rng(7)
        self._singles = [b"%r" % float(v) for v in rng.lognormal(size=10_000)]
        self._blocks = [encode_float64_block(rng.lognormal(size=BLOCK)) for _ in range(100)]
        self._client = producer(settings, linger_ms=20)
        self._topic = settings.topic_numbers
        self._rate = rate
        self.numbers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _send(self, value: bytes) -> None:
        while True:
            try:
                self._client.produce(self._topic, value)
                return
            except BufferError:
                self._client.poll(0.05)

    def _run(self) -> None:
        i = 0
        started = time.monotonic()
        while not self._stop.is_set():
            ahead = i / self._rate - (time.monotonic() - started)
            if ahead > 0.005:
                time.sleep(ahead)
            for _ in range(SINGLES_PER_BLOCK):
                self._send(self._singles[i % len(self._singles)])
                i += 1
            self._send(self._blocks[i % len(self._blocks)])
            self.numbers += SINGLES_PER_BLOCK + BLOCK
            self._client.poll(0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.flush(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument(
        "--rate", type=float, default=100_000, help="single-number messages per second (plus 1/10 as many blocks)"
    )
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp, bootstrap = bench_environment(stack, "dmedian-memory-")
        run = f"memory-{uuid.uuid4().hex[:8]}"
        env = worker_env(bootstrap, run, tmp, {"numbers_retention_ms": "60000"})
        settings, worker = deploy_worker(stack, env, tmp / "worker.log")
        stream = _Producer(settings, args.rate)
        stream.start()
        stack.callback(stream.stop)
        started = time.time()
        print(f"{'t (s)':>7}{'worker RSS (MB)':>17}{'lag (msgs)':>12}{'n served':>16}{'produced':>16}", flush=True)
        samples: list[float] = []
        while time.time() - started < args.minutes * 60:
            time.sleep(args.every)
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited; see {tmp / 'worker.log'}")
            rss = _rss_mb(worker.pid)
            samples.append(rss)
            record = wait_for_record(settings, lambda _: True, 10)
            served = record.n if record else 0
            print(f"{time.time() - started:7.0f}{rss:17.1f}{_lag(settings):12,d}{served:16,d}{stream.numbers:16,d}",
                  flush=True)  # fmt: skip
        # The first minute is warm-up: caches, buffers and the sketches filling.
        steady = samples[2:] if len(samples) > 3 else samples
        print(f"RSS after warm-up: first {steady[0]:.1f} MB, last {steady[-1]:.1f} MB, max {max(steady):.1f} MB, "
              f"growth {steady[-1] - steady[0]:+.1f} MB over {len(steady) * args.every / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
