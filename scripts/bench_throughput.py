#!/usr/bin/env python3
"""Messages per second through one process: our worker against its peers, in ONE run.

On the same broker and the same pre-produced topics (8 partitions), per workload
(single-number messages, 1,000-number JSON arrays, 1,000-number float64 blocks):

* ``bare``: a bare confluent-kafka ``consume(10000)`` loop, our vectorised decode
  and one KLL update per batch: the practical ceiling of a Python consumer;
* ``worker/batch``: our Faust worker with batch delivery (``delivery = "batch"``);
* ``worker/event``: the same worker with Faust's per-event delivery;
* ``quix``: Quix Streams doing the same sketch job per message, in its own
  virtual environment (it pins an older confluent-kafka), made by this script
  under ``.cache/bench-peers/`` on first use.

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
from contextlib import ExitStack
from pathlib import Path

import datasketches
from bench_pipeline import WORKLOADS, BenchInput, bench_environment, measure_worker, prepare_input
from confluent_kafka import Consumer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config import load_settings  # noqa: E402
from pipeline.core.codec import decode_batch  # noqa: E402
from pipeline.kafka.clients import admin_client  # noqa: E402

PEERS_DIR = REPO / ".cache" / "bench-peers"
# The workers send snapshots on the interval rule here: the rate is read from the
# snapshots' timestamps, which the budget rule makes sparse. Ingestion is the same.
_INGEST_ONLY = {"emission_rule": "interval"}
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


def bare_loop(bootstrap: str, data: BenchInput) -> float:
    """Messages/s of a bare confluent-kafka loop doing the same job (decode + one KLL update per batch)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bare-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([data.topic])
    sketch = datasketches.kll_doubles_sketch(200)
    seen, first = 0, 0.0
    deadline = time.monotonic() + 600
    try:
        while seen < data.messages and time.monotonic() < deadline:
            messages = consumer.consume(10_000, timeout=1.0)
            if not messages:
                continue
            if not first:
                first = time.perf_counter()
            decoded = decode_batch([m.value() for m in messages if m.error() is None])
            sketch.update(decoded.values)
            seen += len(messages)
        elapsed = time.perf_counter() - first
    finally:
        consumer.close()
    if sketch.n != data.values.size:
        raise SystemExit(f"bare loop summarised {sketch.n} of {data.values.size} numbers")
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


def _worker_rate(bootstrap: str, data: BenchInput, tmp: Path, delivery: str) -> float:
    return measure_worker(bootstrap, data, tmp, {"delivery": delivery} | _INGEST_ONLY)["msgs_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=1_000_000, help="messages in the single-number workload")
    parser.add_argument("--batched", type=int, default=10_000_000, help="numbers in each batched workload")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--skip", action="append", default=[], choices=["bare", "batch", "event", "quix"])
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append", help="run only these workloads")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp, bootstrap = bench_environment(stack, "dmedian-throughput-")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"broker {bootstrap}, {args.partitions} partitions; one process per runner")  # fmt: skip
        print(f"{'workload':<18}{'runner':<14}{'messages':>11}{'msgs/s':>12}{'numbers/s':>14}{'vs bare':>9}")
        for name in args.only or WORKLOADS:
            numbers = args.single if name == "single" else args.batched
            data = prepare_input(bootstrap, name, numbers, args.partitions)
            bare = None
            runners = {
                "bare": lambda d=data: bare_loop(bootstrap, d),
                "worker/batch": lambda d=data: _worker_rate(bootstrap, d, tmp, "batch"),
                "worker/event": lambda d=data: _worker_rate(bootstrap, d, tmp, "event"),
                "quix": lambda d=data: quix(bootstrap, d, tmp),
            }
            for runner, measure in runners.items():
                if runner.split("/")[-1] in args.skip:
                    continue
                rate = measure()
                bare = rate if runner == "bare" else bare
                ratio = f"{rate / bare:>8.2f}x" if bare else f"{'-':>9}"
                print(f"{name:<18}{runner:<14}{data.messages:>11,}{rate:>12,.0f}{rate * data.batch:>14,.0f}{ratio}",
                      flush=True)  # fmt: skip
            admin_client(load_settings(environ={"KAFKA_BOOTSTRAP_SERVERS": bootstrap})).delete_topics([data.topic])


if __name__ == "__main__":
    main()
