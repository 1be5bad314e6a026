"""``dmedian replay``: rebuild state from the input topic, or the aggregator from ``sketches``.

From the input: a worker under a fresh app id reads ``numbers`` (from the
beginning, or from a timestamp) into its own ``sketches``/``medians`` topics;
the live output is untouched until it has caught up. ``--take-over`` then
restarts it publishing to the live ``medians`` topic, in the foreground.

From ``sketches`` (``--sketches``): merge the latest snapshot of every shard,
as a new aggregator does, and print (or, with ``--take-over``, publish) it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import typer

from config import Settings
from pipeline.cli.common import console, fail, say, settings_or_exit
from pipeline.cli.progress import progress_bar
from pipeline.cli.topics_cmd import ensure_topics
from pipeline.core.merge import GlobalEstimator
from pipeline.core.wire import MedianRecord
from pipeline.errors import EmptyTopicError
from pipeline.kafka.clients import producer, require_topics
from pipeline.kafka.follow import wait_for_record
from pipeline.kafka.produce import ProduceError, produce_values
from pipeline.kafka.replay import (
    ReplayPlan,
    caught_up,
    commit_start,
    new_replay_id,
    plan_replay,
    replay_settings,
    replayed_records,
)
from pipeline.kafka.sketches_log import read_sketches_log
from pipeline.localbroker import free_port

__all__ = ["replay"]

_MEDIAN_KEY = b"global"


def replay(
    from_timestamp: str | None = typer.Option(
        None, "--from-timestamp", help="Replay input from this time on (ISO 8601, or epoch milliseconds)."
    ),
    sketches: bool = typer.Option(False, "--sketches", help="Rebuild only the aggregator, from the compacted topic."),
    take_over: bool = typer.Option(False, "--take-over", help="Once caught up, publish to the live medians topic."),
    app_id: str | None = typer.Option(None, "--app-id", help="Continue this replay (default: a fresh app id)."),
    timeout_s: float = typer.Option(3600.0, "--timeout", help="Give up if not caught up after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print the rebuilt record as JSON on stdout."),
) -> None:
    """Rebuild state from the input topic under a fresh app id, or the aggregator from ``sketches``."""
    settings = settings_or_exit()
    if sketches:
        if from_timestamp or app_id:
            fail("--sketches rebuilds from the compacted topic as it is: --from-timestamp and --app-id do not apply")
        _from_sketches(settings, take_over, as_json)
        return
    from_ms = _parse_time(from_timestamp) if from_timestamp else None
    fresh = app_id is None
    replay_id = app_id or new_replay_id(settings)
    plan = plan_replay(settings, replay_id, from_ms)
    if fresh and plan.records == 0:
        since = f" at or after {from_timestamp}" if from_timestamp else ""
        raise EmptyTopicError(f"{settings.topic_numbers!r} holds no records{since}: nothing to replay")
    if fresh:
        commit_start(settings, plan)
    # Its topics exist before its worker or this command reads them.
    ensure_topics(settings.model_copy(update=replay_settings(settings, replay_id)))
    say(f"replay {replay_id}: {plan.records:,} input records to read into {replay_id}-sketches")
    started = time.monotonic()
    worker = _ReplayWorker(settings, replay_id, len(plan.end))
    worker.start(live_output=False)
    try:
        record = _catch_up(settings, plan, worker, timeout_s)
        took = time.monotonic() - started
        say(
            f"caught up in {took:.1f} s: n={record.n:,}, median={record.median.value:.6g} "
            f"[{record.median.lower:.6g}, {record.median.upper:.6g}], {record.n / took:,.0f} numbers/s"
        )
        if as_json:
            typer.echo(record.to_json().decode())
        worker.stop()
        if not take_over:
            say(f"the live output is untouched; to take over: dmedian replay --app-id {replay_id} --take-over")
            return
        worker.start(live_output=True)
        env = " ".join(f"{_env(k)}={v}" for k, v in replay_settings(settings, replay_id, live_output=True).items())
        say(
            f"took over: publishing to {settings.topic_medians}. Stop the workers of app id {settings.app_id!r}, "
            f"and start more with: {env}"
        )
        worker.wait_in_foreground()
    finally:
        worker.stop()


def _catch_up(settings: Settings, plan: ReplayPlan, worker: _ReplayWorker, timeout_s: float) -> MedianRecord:
    replay_view = settings.model_copy(update=worker.setting_overrides)
    deadline = time.monotonic() + timeout_s
    with progress_bar(console, "records") as progress:
        task = progress.add_task("replaying", total=max(plan.records, 1))
        while True:
            if not worker.alive:
                fail(f"the replay worker exited ({worker.returncode}); its log: {worker.log_path}")
            if time.monotonic() > deadline:
                fail(f"not caught up within {timeout_s:.0f} s; continue with --app-id {plan.app_id}")
            snapshots = read_sketches_log(replay_view, settings.kafka_timeout_s).snapshots
            progress.update(task, completed=replayed_records(plan, snapshots))
            if caught_up(plan, snapshots):
                total = sum(s.n for s in snapshots.values())
                record = wait_for_record(replay_view, partial(_covers, total), max(deadline - time.monotonic(), 1))
                if record is not None and record.n >= total:
                    return record
            time.sleep(1.0)


def _env(setting: str) -> str:
    return f"DMEDIAN_{setting.upper()}"


def _covers(total: int, record: MedianRecord) -> bool:
    return record.n >= total


def _from_sketches(settings: Settings, take_over: bool, as_json: bool) -> None:
    require_topics(settings, "sketches", *(["medians"] if take_over else []))
    started = time.monotonic()
    log = read_sketches_log(settings, settings.kafka_timeout_s)
    if not log.snapshots:
        unreadable = f" ({log.unreadable:,} unreadable records skipped)" if log.unreadable else ""
        raise EmptyTopicError(f"{settings.topic_sketches!r} holds no snapshot{unreadable}: nothing to rebuild")
    estimator = GlobalEstimator(settings.sketch_k, settings.quantiles)
    for snapshot in log.snapshots.values():
        estimator.offer(snapshot)
    theta = settings.error_budget if settings.emission_rule == "budget" else None
    pending = sum(p.pending for p in log.progress.values())
    record = estimator.record(int(time.time() * 1000), theta, pending)
    took = time.monotonic() - started
    say(
        f"rebuilt from {log.records_read:,} records of {settings.topic_sketches} in {took:.2f} s: "
        f"{record.shards} shards, n={record.n:,}, median={record.median.value:.6g} "
        f"[{record.median.lower:.6g}, {record.median.upper:.6g}]"
    )
    if as_json:
        typer.echo(record.to_json().decode())
    if take_over:
        client = producer(settings, message_timeout_ms=settings.kafka_timeout_ms)
        try:
            produce_values(client, settings.topic_medians, [record.to_json()], key=lambda _: _MEDIAN_KEY,
                           timeout_s=settings.kafka_timeout_s + 5.0)  # fmt: skip
        except ProduceError as exc:
            raise exc.for_operator(settings) from exc
        say(f"published to {settings.topic_medians}")


def _parse_time(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--from-timestamp {text!r} is neither epoch milliseconds nor an ISO 8601 time")
    if moment.tzinfo is None:
        fail(f"--from-timestamp {text!r} has no time zone (add Z or +00:00)")
    return int(moment.timestamp() * 1000)


class _ReplayWorker:
    """The replay's worker process: ``dmedian worker`` with the replay's settings."""

    def __init__(self, settings: Settings, replay_id: str, partitions: int) -> None:
        data_dir = Path(settings.data_dir) / replay_id
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir.parent / f"{replay_id}.log"
        self._settings = settings
        self._replay_id = replay_id
        self._base = {
            "DMEDIAN_DATA_DIR": str(data_dir),
            "DMEDIAN_WEB_PORT": str(free_port()),
            "DMEDIAN_NUMBERS_PARTITIONS": str(partitions),
        }
        self.setting_overrides: dict[str, object] = {}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, live_output: bool) -> None:
        overrides = replay_settings(self._settings, self._replay_id, live_output=live_output)
        self.setting_overrides = dict(overrides)
        env = os.environ | self._base | {_env(k): v for k, v in overrides.items()}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process is not None else None

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)

    def wait_in_foreground(self) -> None:
        """Run until the worker exits or this command is interrupted (then stop it)."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        try:
            while self.alive:
                time.sleep(0.5)
        except KeyboardInterrupt:
            say("stopping the replay worker")
        if self.returncode not in (None, 0, -signal.SIGTERM):
            fail(f"the replay worker exited with {self.returncode}; its log: {self.log_path}")
