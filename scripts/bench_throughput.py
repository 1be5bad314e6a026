#!/usr/bin/env python3
"""Messages per second through one process: our worker against its peers, in ONE run.

On the same broker and the same pre-produced topics (8 partitions), per workload
(single-number messages, 1,000-number JSON arrays, 1,000-number float64 blocks):

* ``ceiling``: the fastest plain confluent-kafka loop: ``consume(10000)``, the
  batch's values joined and parsed in one call (``np.frombuffer`` for float64
  blocks, one ``orjson.loads`` for JSON), no validation, one KLL update per batch;
* ``bare``: the same loop with our codec (``decode_batch``: validation, dead letters);
* ``worker``: our Faust worker with the settings a user gets (nothing set: the
  ``budget`` emission rule, the default delivery);
* ``worker interval``: the same with ``emission_rule = interval``: what the budget costs;
* ``worker/event``: the default worker with Faust's per-event delivery;
* ``quix``: Quix Streams doing the same sketch job per message, in its own
  virtual environment (it pins an older confluent-kafka), made by this script
  under ``.cache/bench-peers/`` on first use.

Worker rates come from the shard table's changelog: every batch writes its shard's
state (with the last source offset) once, so the changelog's timestamps time the
ingestion alone, whatever the emission rule, without the worker's start-up. The
loops and Quix are timed from their first message to their last. ``of KLL`` is each
runner's numbers/s as a fraction of the KLL-update limit (one ``update`` of a numpy
array, measured here first): nothing that sketches every number can beat it.
``n caught up`` is, for workers, the time from the last state write to the first
``medians`` record whose ``n`` is every number (the idle flush under the budget rule).

    .venv/bin/python scripts/bench_throughput.py
    .venv/bin/python scripts/bench_throughput.py --single 1000000 --batched 20000000 --skip quix
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import datasketches
import numpy as np
import numpy.typing as npt
import orjson
from bench_pipeline import WORKLOADS, BenchInput, bench_environment, deploy_worker, prepare_input, worker_env
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config import Settings, load_settings  # noqa: E402
from pipeline.core.codec import FLOAT64_MAGIC, decode_batch  # noqa: E402
from pipeline.core.envelope import unpack_envelope  # noqa: E402
from pipeline.core.sketch import STATE_MAGIC, STATE_VERSION  # noqa: E402
from pipeline.kafka.clients import admin_client, consumer, watermarks  # noqa: E402
from pipeline.kafka.follow import wait_for_record  # noqa: E402
from topics import topic_set  # noqa: E402
from topics.specs import SHARD_TABLE, changelog_topic  # noqa: E402

PEERS_DIR = REPO / ".cache" / "bench-peers"
WORKERS = {
    "worker": {},  # the defaults: what a user gets
    "worker interval": {"emission_rule": "interval"},
    "worker/event": {"delivery": "event"},
}
"""Worker runners and their settings (everything else the defaults)."""
QUIX_REQUIREMENTS = ["quixstreams==3.28.1", "datasketches>=5.2,<6", "numpy>=2,<3", "orjson>=3.10,<4"]

QUIX_APP = r"""
import json, sys, time, uuid
import datasketches, numpy, orjson
from quixstreams import Application

bootstrap, topic, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = Application(broker_address=bootstrap, consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
                  auto_offset_reset="earliest", loglevel="WARNING")
sketch = datasketches.kll_doubles_sketch(200)
state = {"n": 0, "first": None, "end": None}

def update(value):
    if state["first"] is None:
        state["first"] = time.perf_counter()
    if value[:4] == b"DMF8":
        sketch.update(numpy.frombuffer(value, "<f8", offset=4).astype(numpy.float64))
    elif value[:1] == b"[":
        sketch.update(numpy.asarray(orjson.loads(value), dtype=numpy.float64))
    else:
        sketch.update(float(value))
    state["n"] += 1
    if state["n"] >= expected and state["end"] is None:
        state["end"] = time.perf_counter()
        app.stop()

sdf = app.dataframe(app.topic(topic, value_deserializer="bytes"))
sdf = sdf.update(update)
app.run()
print(json.dumps({"msgs_per_s": expected / (state["end"] - state["first"]), "n": int(sketch.n)}))
"""


def kll_ns_per_number(k: int = 200, size: int = 1_000_000, repeats: int = 5) -> float:
    """The KLL-update limit: ns per number of one ``update`` with a numpy array of ``size`` (best of ``repeats``)."""
    values = np.random.default_rng(1).lognormal(size=size)
    best = float("inf")
    for _ in range(repeats):
        sketch = datasketches.kll_doubles_sketch(k)
        started = time.perf_counter()
        sketch.update(values)
        best = min(best, time.perf_counter() - started)
    return best / size * 1e9


def joined_parse(values: Sequence[bytes | None]) -> npt.NDArray[np.float64]:
    """The batch's numbers in one call, trusting the input (the ceiling loop's decode)."""
    present = [value for value in values if value]
    if present[0][:4] == FLOAT64_MAGIC:
        # A bytearray: the sketch takes only a writable array, and this way frombuffer copies nothing.
        return np.frombuffer(bytearray().join([memoryview(v)[4:] for v in present]), np.float64)
    if present[0][:1] == b"[":
        return np.asarray(orjson.loads(b"[" + b",".join([v[1:-1] for v in present]) + b"]"), dtype=np.float64)
    return np.asarray(orjson.loads(b"[" + b",".join(present) + b"]"), dtype=np.float64)


def consume_loop(
    bootstrap: str, data: BenchInput, decode: Callable[[Sequence[bytes | None]], npt.NDArray[np.float64]]
) -> float:
    """Messages/s of a plain confluent-kafka loop: ``consume(10000)``, ``decode``, one KLL update per batch."""
    client = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-{uuid.uuid4().hex[:8]}",
                       "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    client.subscribe([data.topic])
    sketch = datasketches.kll_doubles_sketch(200)
    seen, first = 0, 0.0
    deadline = time.monotonic() + 600
    try:
        while seen < data.messages and time.monotonic() < deadline:
            messages = client.consume(10_000, timeout=1.0)
            if not messages:
                continue
            if not first:
                first = time.perf_counter()
            sketch.update(decode([m.value() for m in messages if m.error() is None]))
            seen += len(messages)
        elapsed = time.perf_counter() - first
    finally:
        client.close()
    if sketch.n != data.values.size:
        raise SystemExit(f"loop summarised {sketch.n} of {data.values.size} numbers")
    return seen / elapsed


def quix_python() -> Path:
    """The peer venv's python, created on first use."""
    venv = PEERS_DIR / "quix"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        print("creating the Quix Streams environment (once) ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *QUIX_REQUIREMENTS], check=True)
        stamp.touch()
    return python


def quix(bootstrap: str, data: BenchInput, tmp: Path) -> float:
    script = tmp / "quix_app.py"
    script.write_text(QUIX_APP)
    result = subprocess.run([str(quix_python()), str(script), bootstrap, data.topic, str(data.messages)],
                            capture_output=True, text=True, timeout=1800, check=False)  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"quix failed:\n{result.stderr[-2000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1])["msgs_per_s"])


def changelog_timeline(settings: Settings, partitions: int) -> list[tuple[int, int]]:
    """(timestamp ms, messages ingested by all shards) after each write of the shard table, in order.

    Each write holds its shard's state, whose header carries the last source offset:
    on a fresh input topic, offset + 1 messages of that partition are in.
    """
    client = consumer(settings, f"bench-{uuid.uuid4().hex[:8]}")
    topic = changelog_topic(settings.app_id, SHARD_TABLE)
    ends = {p: watermarks(client, TopicPartition(topic, p))[1] for p in range(partitions)}
    client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end])
    left = {p for p, end in ends.items() if end}
    writes = []
    try:
        while left:
            for message in client.consume(10_000, 1.0):
                value, partition, offset = message.value(), message.partition(), message.offset()
                if message.error() or value is None or partition is None or offset is None:
                    continue
                header = unpack_envelope(value, STATE_MAGIC, STATE_VERSION).header
                writes.append((message.timestamp()[1], int(header["shard"]), int(header["last_offset"]) + 1))
                if offset >= ends[partition] - 1:
                    left.discard(partition)
    finally:
        client.close()
    done: dict[int, int] = {}
    timeline = []
    for ts, shard, count in sorted(writes):
        done[shard] = max(done.get(shard, 0), count)
        timeline.append((ts, sum(done.values())))
    return timeline


def worker_run(bootstrap: str, data: BenchInput, tmp: Path, overrides: dict[str, str]) -> tuple[float, float]:
    """Run one worker (fresh app id) over the input: its messages/s and the ms until ``n`` caught up."""
    run = f"bench-{uuid.uuid4().hex[:8]}"
    env = worker_env(bootstrap, run, tmp, {"topic_numbers": data.topic, "numbers_partitions": str(data.partitions)}
                     | overrides)  # fmt: skip
    numbers, log = data.values.size, tmp / f"{run}.log"
    with ExitStack() as stack:  # stops the worker
        settings, worker = deploy_worker(stack, env, log)
        last = wait_for_record(settings, lambda r: r.n >= numbers, 900, lambda: worker.poll() is not None)
    if last is None or last.n != numbers:
        raise SystemExit(f"{data.topic}: incomplete (n={last.n if last else 0} of {numbers}); see {log}")
    timeline = changelog_timeline(settings, data.partitions)
    admin_client(settings).delete_topics([spec.name for spec in topic_set(settings) if spec.name != data.topic])
    (start_ts, start_count), end_ts = timeline[0], next(ts for ts, count in timeline if count >= data.messages)
    return (data.messages - start_count) / max((end_ts - start_ts) / 1000, 1e-3), float(last.ts - end_ts)


def measure(runner: str, bootstrap: str, data: BenchInput, tmp: Path) -> tuple[float, float | None]:
    """One runner's messages/s over ``data`` (and, for workers, the ms until ``n`` caught up)."""
    if runner == "ceiling":
        return consume_loop(bootstrap, data, joined_parse), None
    if runner == "bare":
        return consume_loop(bootstrap, data, lambda values: decode_batch(values).values), None
    if runner == "quix":
        return quix(bootstrap, data, tmp), None
    return worker_run(bootstrap, data, tmp, WORKERS[runner])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=1_000_000, help="messages in the single-number workload")
    parser.add_argument("--batched", type=int, default=10_000_000, help="numbers in each batched workload")
    parser.add_argument("--partitions", type=int, default=8)
    runners = ["ceiling", "bare", *WORKERS, "quix"]
    parser.add_argument("--skip", action="append", default=[], choices=runners, help="leave out this runner")
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append", help="run only these workloads")
    args = parser.parse_args()
    kll_ns = kll_ns_per_number()
    limit = 1e9 / kll_ns
    with ExitStack() as stack:
        tmp, bootstrap = bench_environment(stack, "dmedian-throughput-")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"broker {bootstrap}, {args.partitions} partitions; one process per runner")  # fmt: skip
        print(f"KLL-update limit: {kll_ns:.1f} ns per number (k=200, numpy array of 1e6) = {limit:,.0f} numbers/s")
        print(f"{'workload':<17}{'runner':<17}{'messages':>11}{'msgs/s':>12}{'numbers/s':>14}{'vs ceiling':>11}"
              f"{'of KLL':>8}{'n caught up':>13}")  # fmt: skip
        for name in args.only or WORKLOADS:
            numbers = args.single if name == "single" else args.batched
            data = prepare_input(bootstrap, name, numbers, args.partitions)
            rates: dict[str, float] = {}
            for runner in runners:
                if runner in args.skip:
                    continue
                rate, caught_up_ms = measure(runner, bootstrap, data, tmp)
                rates[runner] = rate
                ceiling = f"{rate / rates['ceiling']:>10.2f}x" if "ceiling" in rates else f"{'-':>11}"
                caught_up = f"{caught_up_ms:>10,.0f} ms" if caught_up_ms is not None else ""
                print(f"{name:<17}{runner:<17}{data.messages:>11,}{rate:>12,.0f}{rate * data.batch:>14,.0f}{ceiling}"
                      f"{rate * data.batch / limit:>8.1%}{caught_up}", flush=True)  # fmt: skip
            summary = []
            if "worker" in rates and "worker interval" in rates:
                cost = 1 - rates["worker"] / rates["worker interval"]
                summary.append(f"the budget rule costs {cost:.1%} of interval's rate")
            if "worker" in rates and "quix" in rates:
                summary.append(f"worker vs quix {rates['worker'] / rates['quix']:.2f}x")
            if summary:
                print(f"{name:<17}" + "; ".join(summary), flush=True)
            admin_client(load_settings(environ={"KAFKA_BOOTSTRAP_SERVERS": bootstrap})).delete_topics([data.topic])


if __name__ == "__main__":
    main()
