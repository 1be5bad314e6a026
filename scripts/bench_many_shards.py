#!/usr/bin/env python3
"""Many shards: what a deployment of N partitions and W workers costs, with default settings.

One run, one broker (a local one on free ports unless ``KAFKA_BOOTSTRAP_SERVERS`` is
set), every figure printed at the end:

1. ``topics``: creating the run's topics (``numbers`` and the shard changelog have N
   partitions each; created in steps under the broker's per-request cap).
2. ``healthy``: from starting W workers until every one answers ``/health`` with 200
   and together they own all N shards.
3. ``cover``: numbers spread over every partition (JSON arrays of 100, round robin, from
   one idempotent producer per 512 partitions in parallel),
   then the time from the producer's end until a ``medians`` record covers them all
   (n exact), and the median audited against the exact one.
4. RSS of each worker (peak seen while it ran, sampled every second from /proc).
5. ``sketches``: the snapshots and heartbeats the aggregator took during the cover
   phase, and their rate.
6. ``--kill``: SIGKILL one worker, produce a second wave over every partition, and
   time from the kill until a record covers every number, n exact (and how much of it
   the second wave's producers took to have every message acknowledged).
7. The per-tick timer cost with 10,000 idle shards against 10 (``scripts/bench_ticks.py``).

    .venv/bin/python scripts/bench_many_shards.py --partitions 512 --workers 1
    .venv/bin/python scripts/bench_many_shards.py --partitions 10000 --workers 2 --numbers 10000000 --kill
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from bench_pipeline import start_worker, worker_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition  # noqa: E402

from config import Settings, load_settings  # noqa: E402
from pipeline.core.exact import check_rank  # noqa: E402
from pipeline.core.wire import MedianRecord, ShardProgress, SketchSnapshot, parse_sketches_value  # noqa: E402
from pipeline.kafka.clients import admin_client, consumer, producer  # noqa: E402
from pipeline.kafka.follow import wait_for_record  # noqa: E402
from pipeline.kafka.generate import Distribution, MessageFormat, encode_messages, generate  # noqa: E402
from pipeline.kafka.produce import produce_values  # noqa: E402
from pipeline.localbroker import LocalBroker, LocalBrokerOptions, find_free_port_pair, free_port  # noqa: E402
from topics import topic_set  # noqa: E402
from topics.admin import create_topics  # noqa: E402

BATCH = 100  # numbers per JSON-array message, as in the table


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRss:
    """Samples the RSS of some processes every second and keeps each one's peak."""

    def __init__(self) -> None:
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, pid: int) -> None:
        self.peaks.setdefault(pid, 0.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for pid in list(self.peaks):
                self.peaks[pid] = max(self.peaks[pid], _rss_mb(pid))


def _health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def wait_healthy(ports: list[int], partitions: int, workers: list[subprocess.Popen[bytes]], timeout_s: float) -> float:
    """Seconds until every worker answers /health 200 and together they own every shard."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if any(w.poll() is not None for w in workers):
            raise SystemExit("a worker exited while starting; see its log")
        answers = [_health(port) for port in ports]
        owned: set[int] = set()
        for _status, body in answers:
            shards = body.get("shards_owned")
            if isinstance(shards, list):
                owned.update(int(s) for s in shards)
        if all(status == 200 for status, _ in answers) and len(owned) == partitions:
            return time.monotonic() - started
        time.sleep(0.5)
    raise SystemExit(f"workers not healthy after {timeout_s:.0f} s")


# Partitions per producer when a wave is spread over every partition. librdkafka sends one
# ProduceRequest per partition, and an idempotent producer keeps at most 5 in flight: one
# producer writing a message to each of 8,192 partitions waited 8,192 / 5 round trips (108 s
# of a takeover run, the broker at 30-480 ms a round trip), while the pipeline covered the
# wave 0.6 s after its last acknowledgement. Idempotence stays on (n must be exact).
PARTITIONS_PER_PRODUCER = 512


def produce_spread(settings: Settings, values: np.ndarray, partitions: int) -> int:
    """Produce ``values`` as JSON arrays of BATCH, message i to partition i mod ``partitions``.

    One idempotent producer per :data:`PARTITIONS_PER_PRODUCER` partitions, in parallel threads.
    """
    messages = list(encode_messages(values, MessageFormat.JSON_ARRAY, BATCH))
    producers = max(1, -(-partitions // PARTITIONS_PER_PRODUCER))
    # Producer k takes the messages whose partition p has p mod producers == k, in order.
    shares: list[list[tuple[int, bytes]]] = [[] for _ in range(producers)]
    for index, message in enumerate(messages):
        partition = index % partitions
        shares[partition % producers].append((partition, message))
    sent = [0] * producers
    errors: list[BaseException] = []

    def produce_share(k: int) -> None:
        share = shares[k]
        try:
            sent[k] = produce_values(
                producer(settings),
                settings.topic_numbers,
                (message for _, message in share),
                partition=lambda seq: share[seq - 1][0],
                timeout_s=600,
            )
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=produce_share, args=(k,)) for k in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(sent)


def sketches_traffic(settings: Settings, since_ms: int, until_ms: int) -> tuple[int, int]:
    """(snapshots, heartbeats) on ``sketches`` stamped between ``since_ms`` and ``until_ms``."""
    client = consumer(settings, f"bench-{uuid.uuid4().hex[:8]}")
    tp = TopicPartition(settings.topic_sketches, 0, OFFSET_BEGINNING)
    end = client.get_watermark_offsets(tp, timeout=10)[1]
    client.assign([tp])
    snapshots = heartbeats = 0
    try:
        while end:
            message = client.poll(1.0)
            if message is None or message.error():
                continue
            value = message.value()
            parsed = parse_sketches_value(value) if value is not None else None
            if isinstance(parsed, SketchSnapshot) and since_ms <= parsed.ts <= until_ms:
                snapshots += 1
            elif isinstance(parsed, ShardProgress) and since_ms <= parsed.ts <= until_ms:
                heartbeats += 1
            offset = message.offset()
            if offset is not None and offset >= end - 1:
                break
    finally:
        client.close()
    return snapshots, heartbeats


def _per_tick_ratio() -> str:
    try:
        from bench_ticks import per_tick_cost  # noqa: PLC0415
    except ImportError:
        return "n/a (scripts/bench_ticks.py missing)"
    few, many = per_tick_cost(10), per_tick_cost(10_000)
    return f"{few * 1e6:,.1f} us at 10 idle shards, {many * 1e6:,.1f} us at 10,000: ratio {many / few:.2f}"


def warm_group_coordinator(settings: Settings, timeout_s: float = 120.0) -> float:
    """Make a fresh broker create ``__consumer_offsets`` now; return the seconds it took.

    The first group on a broker has it created (50 partitions), which took 27 s on a
    broker already holding 2 x 2,048 partitions: a cost of a new cluster, not of the
    workers, so it is paid (and printed) before the run's own topics exist.
    """
    started = time.monotonic()
    client = consumer(settings, f"warm-{uuid.uuid4().hex[:8]}")
    try:
        while time.monotonic() - started < timeout_s:
            try:
                client.committed([TopicPartition(settings.topic_medians, 0)], timeout=5)
                return time.monotonic() - started
            except KafkaException:
                time.sleep(0.2)
    finally:
        client.close()
    raise SystemExit(f"the group coordinator did not answer within {timeout_s:.0f} s")


def _dump_records(settings: Settings, into: Path) -> None:
    # Every medians record of the run, for reading where a phase's time went.
    into.parent.mkdir(parents=True, exist_ok=True)
    client = consumer(settings, f"dump-{uuid.uuid4().hex[:8]}")
    try:
        tp = TopicPartition(settings.topic_medians, 0, OFFSET_BEGINNING)
        end = client.get_watermark_offsets(tp, timeout=10)[1]
        client.assign([tp])
        with into.open("w") as out:
            out.write("ts_ms,n,shards,stale_shards,pending\n")
            read = 0
            while read < end:
                message = client.poll(5)
                if message is None:
                    break
                value, offset = message.value(), message.offset()
                if message.error() or value is None or offset is None:
                    continue
                read = offset + 1
                record = MedianRecord.from_json(value)
                out.write(f"{record.ts},{record.n},{record.shards},{record.stale_shards},{record.pending}\n")
    finally:
        client.close()


def _copy_logs(tmp: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for log in tmp.glob("w*.log"):
        shutil.copy(log, into / log.name)


def _broker(stack: ExitStack, tmp: Path, partitions: int) -> str:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if bootstrap:
        return bootstrap
    port, controller = find_free_port_pair()
    # Two topics of N partitions each: about 50 KB of broker heap per partition.
    heap = "1g" if partitions <= 4096 else "3g"
    broker = LocalBroker(LocalBrokerOptions(port=port, controller_port=controller, home=tmp / "broker", heap=heap))
    broker.start()
    stack.callback(broker.reset)
    return broker.bootstrap


@dataclass
class Deployment:
    """The run's broker, settings and workers."""

    settings: Settings
    envs: list[dict[str, str]]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    rss: PeakRss = field(default_factory=PeakRss)
    figures: list[tuple[str, str]] = field(default_factory=list)

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [w for w in self.workers if w.poll() is None]

    def wait_covering(self, total: int, timeout_s: float, what: str) -> MedianRecord:
        workers = self.alive()
        started, shown = time.monotonic(), [0.0]

        def covers(record: MedianRecord) -> bool:
            # A line every 3 s: where the time goes (numbers arriving, or pending, or stale shards).
            now = time.monotonic() - started
            if now - shown[0] >= 3:
                shown[0] = now
                print(f"  {what}, {now:5.1f} s: n={record.n:,} of {total:,}, pending {record.pending:,},"
                      f" {record.shards:,} shards, {record.stale_shards:,} stale", flush=True)  # fmt: skip
            return record.n >= total

        record = wait_for_record(self.settings, covers, timeout_s,
                                 lambda: any(x.poll() is not None for x in workers))  # fmt: skip
        if record is None or record.n != total:
            raise SystemExit(f"{what}: no record covers every number (n={record.n if record else 0} of {total})")
        return record


def start_workers(stack: ExitStack, run: Deployment, tmp: Path, timeout_s: float) -> None:
    """Start every worker and wait until they are healthy and own every shard."""
    partitions = run.settings.numbers_partitions
    started = time.monotonic()
    for i, env in enumerate(run.envs):
        worker = start_worker(env, (tmp / f"w{i}.log").open("wb"))
        stack.callback(worker.wait, 60)
        stack.callback(worker.terminate)
        run.workers.append(worker)
        run.rss.watch(worker.pid)
    run.rss.start()
    stack.callback(run.rss.stop)
    ports = [int(env["DMEDIAN_WEB_PORT"]) for env in run.envs]
    healthy = wait_healthy(ports, partitions, run.workers, timeout_s)
    run.figures.append(("workers healthy after start", f"{healthy:.1f} s (from {time.monotonic() - started:.1f})"))
    print(f"healthy after {healthy:.1f} s", flush=True)


def first_wave(run: Deployment, numbers: int, timeout_s: float) -> None:
    """Numbers over every partition; the time until a record covers them; the sketches traffic meanwhile."""
    values = generate(Distribution.LOGNORMAL, numbers, seed=7)
    produce_started_ms = int(time.time() * 1000)
    started = time.monotonic()
    produce_spread(run.settings, values, run.settings.numbers_partitions)
    produced_at = time.monotonic()
    print(f"produced {values.size:,} numbers in {produced_at - started:.1f} s", flush=True)
    record = run.wait_covering(values.size, timeout_s, "first wave")
    cover = time.monotonic() - produced_at
    covered_ms = int(time.time() * 1000)
    run.figures.append((f"record covers {values.size:,} numbers, after the producer ends", f"{cover:.1f} s"))
    error = check_rank(np.sort(values), 0.5, record.median.value).rank_error
    run.figures.append(("  median rank error / bound; shards in the record",
                        f"{error:.5f} / {record.rank_bound:.5f}; {record.shards:,}"))  # fmt: skip
    snapshots, heartbeats = sketches_traffic(run.settings, produce_started_ms, covered_ms)
    seconds = max((covered_ms - produce_started_ms) / 1000, 1e-3)
    run.figures.append(("sketches during produce + cover", f"{snapshots:,} snapshots + {heartbeats:,} heartbeats "
                        f"in {seconds:.1f} s ({(snapshots + heartbeats) / seconds:,.0f}/s)"))  # fmt: skip


def kill_one(run: Deployment, covered: int, wave_size: int, timeout_s: float) -> None:
    """SIGKILL the last worker, then a wave over every partition: time until a record covers every number."""
    victim = run.workers[-1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    killed_at = time.monotonic()
    wave = generate(Distribution.LOGNORMAL, wave_size, seed=8)
    produce_spread(run.settings, wave, run.settings.numbers_partitions)
    produced = time.monotonic() - killed_at
    print(f"produced the second wave ({wave.size:,} numbers) {produced:.1f} s after the kill", flush=True)
    record = run.wait_covering(covered + wave.size, timeout_s, "after the kill")
    run.figures.append(("kill -9 of one worker: record covers every number, after the kill",
                        f"{time.monotonic() - killed_at:.1f} s; n={record.n:,} exact"))  # fmt: skip
    # The producer shares the 2 cores and the broker with the takeover: how much of the
    # figure above the second wave took to be written at all.
    run.figures.append(("  of which the second wave's producer (acknowledged)", f"{produced:.1f} s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=512)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--numbers", type=int, default=2_000_000, help="numbers in the first wave")
    parser.add_argument("--kill", action="store_true", help="SIGKILL a worker, then a second wave")
    parser.add_argument("--wave", type=int, default=0, help="numbers in the second wave (default: numbers / 10)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on any phase after this many s")
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE", help="a worker setting")
    parser.add_argument("--logs", type=Path, help="copy the workers' logs into this folder at the end")
    args = parser.parse_args()
    # A timeout's SIGTERM must still stop the workers and the broker this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.kill and args.workers < 2:
        parser.error("--kill needs --workers 2 or more")
    n, w = args.partitions, args.workers
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="dmedian-many-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        if args.logs:
            stack.callback(_copy_logs, tmp, args.logs)
        bootstrap = _broker(stack, tmp, n)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"broker {bootstrap}; {n:,} partitions, {w} worker(s)", flush=True)  # fmt: skip
        name = f"many-{uuid.uuid4().hex[:8]}"
        overrides = {"numbers_partitions": str(n)} | dict(item.split("=", 1) for item in args.set)
        # One app id (one group) and one set of topics; a data dir and web port per worker.
        base = worker_env(bootstrap, name, tmp, overrides)
        envs = [base | {"DMEDIAN_DATA_DIR": str(tmp / f"w{i}"), "DMEDIAN_WEB_PORT": str(free_port())}
                for i in range(w)]  # fmt: skip
        run = Deployment(load_settings(environ=base), envs)
        warm = warm_group_coordinator(run.settings)
        run.figures.append(("group coordinator ready (a fresh broker's __consumer_offsets)", f"{warm:.1f} s"))
        started = time.monotonic()
        create_topics(admin_client(run.settings), topic_set(run.settings))
        run.figures.append(("topics created", f"{time.monotonic() - started:.1f} s"))
        start_workers(stack, run, tmp, args.timeout)
        first_wave(run, args.numbers, args.timeout)
        if args.kill:
            kill_one(run, args.numbers, args.wave or max(args.numbers // 10, n), args.timeout)
        if args.logs:
            _dump_records(run.settings, args.logs / "medians.csv")
        for i, worker in enumerate(run.workers):
            goal = 200 + 0.1 * n / w
            run.figures.append((f"peak RSS, worker {i}", f"{run.rss.peaks.get(worker.pid, 0.0):,.0f} MB "
                                f"(goal {goal:,.0f} MB: 200 MB + 100 KB x {n // w:,} shards)"))  # fmt: skip
    run.figures.append(("per-tick timer cost", _per_tick_ratio()))
    print()
    for label, value in run.figures:
        print(f"{label:<70}{value}")


if __name__ == "__main__":
    main()
