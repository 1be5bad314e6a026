"""``dmedian demo``: the whole pipeline on the local default, checked against the exact median."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import typer
from rich.table import Table

from config import Settings
from pipeline.cli.broker_cmd import local_broker
from pipeline.cli.common import console, fail, out, say, settings_or_exit
from pipeline.cli.produce_cmd import produce_numbers
from pipeline.cli.topics_cmd import ensure_topics
from pipeline.cli.watch_cmd import record_table
from pipeline.core.exact import check_rank
from pipeline.core.wire import MedianRecord
from pipeline.kafka.clients import admin_client
from pipeline.kafka.follow import latest_snapshots, wait_for_record
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from pipeline.localbroker import BrokerError, LocalBroker, free_port
from topics import topic_set

__all__ = ["demo"]

logger = logging.getLogger(__name__)

_FORMATS = (MessageFormat.SINGLE, MessageFormat.JSON_ARRAY, MessageFormat.FLOAT64)


def demo(
    count: int = typer.Option(1_000_000, min=3, help="Numbers to generate."),
    keep: bool = typer.Option(False, help="Keep the demo's topics, worker state and the broker afterwards."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for the estimate to cover every number."),
) -> None:
    """Start everything, produce COUNT numbers in all three formats, print served vs exact."""
    with (
        _local_broker_if_needed(keep) as broker,
        _demo_deployment(keep, broker) as settings,
        _worker(settings) as (worker, log),
    ):
        values = generate(Distribution.MIXED, count, seed=7)
        started = time.monotonic()
        for part, fmt in zip(np.array_split(values, 3), _FORMATS, strict=True):
            console.print(f"producing {part.size:,} numbers as {fmt.value} messages")
            produce_numbers(part, fmt, 1000, 0.0)
        console.print(f"waiting for the global estimate to cover all {count:,} numbers ...")
        record = wait_for_record(settings, lambda r: r.n >= count, timeout, lambda: worker.poll() is not None)
        elapsed = time.monotonic() - started
        if record is None or record.n != count:
            why = "the worker exited" if worker.poll() is not None else f"after {timeout:.0f} s"
            fail(f"the estimate covered n={record.n if record else 0} of {count}: {why}; see {log}", code=1)
        out.print(record_table(record))
        ok = _print_audit(record, values)
        snapshots = latest_snapshots(settings)
        medians = ", ".join(f"{s}: {snapshots[s].median.value:.4g}" for s in sorted(snapshots))
        out.print(f"{len(snapshots)} shards, local medians: {medians}")
        out.print(
            f"{count:,} numbers produced and summarised in {elapsed:.1f} s; "
            # The exact median as the table above defines it (the ceil(n/2)-th smallest), not
            # numpy's mean of the two middle values: one definition on the screen.
            f"served median {record.median.value:.6g} vs exact {np.quantile(values, 0.5, method='inverted_cdf'):.6g}"
        )
    if not ok:
        raise typer.Exit(1)


def _print_audit(record: MedianRecord, values: npt.NDArray[np.float64]) -> bool:
    """Print served against exact for every quantile; return whether all are within the bound."""
    report = Table("quantile", "served", "exact", "true rank of served", "rank error", "bound", "within")
    ordered = np.sort(values)
    ok = True
    for estimate in record.quantiles:
        check = check_rank(ordered, estimate.q, estimate.band.value)
        within = check.within(record.rank_error)
        ok &= within
        report.add_row(
            f"{estimate.q:g}", f"{estimate.band.value:.6g}", f"{check.exact:.6g}",
            f"[{check.rank_low:.5f}, {check.rank_high:.5f}]", f"{check.rank_error:.5f}",
            f"{record.rank_error:.5f}", "yes" if within else "NO",
        )  # fmt: skip
    out.print(report)
    return ok


def _kept(settings: Settings, broker: LocalBroker | None) -> str:
    """What ``--keep`` kept: the exports that point the other commands at it, and how to remove it all."""
    data_dir = Path(settings.data_dir).resolve()
    exports = {
        "DMEDIAN_APP_ID": settings.app_id,
        "DMEDIAN_TOPIC_NUMBERS": settings.topic_numbers,
        "DMEDIAN_TOPIC_SKETCHES": settings.topic_sketches,
        "DMEDIAN_TOPIC_MEDIANS": settings.topic_medians,
        "DMEDIAN_TOPIC_DEAD_LETTERS": settings.topic_dead_letters,
        "DMEDIAN_DATA_DIR": str(data_dir),
    }
    if not settings.uses_local_broker:
        exports["KAFKA_BOOTSTRAP_SERVERS"] = settings.bootstrap_servers
    elif settings.local_broker_port != Settings.model_fields["local_broker_port"].default:
        exports["DMEDIAN_LOCAL_BROKER_PORT"] = str(settings.local_broker_port)
    lines = [
        "--keep: the broker, the topics and the worker state stay. To point verify, shards, watch, replay "
        "(and a worker) at them:",
        "  export " + " ".join(f"{name}={value}" for name, value in exports.items()),
    ]
    if broker is not None:
        lines.append("To remove it all (this stops the local broker and deletes its data, every topic on it):")
        lines.append(f"  .venv/bin/dmedian broker stop --port {broker.port} && rm -rf {broker.home} {data_dir}")
    else:
        run = settings.topic_numbers.removesuffix("-numbers")
        lines.append("To remove it all:")
        lines.append(
            f"  kafka-topics.sh --bootstrap-server {settings.bootstrap_servers} --delete --topic '.*{run}.*' "
            f"&& rm -rf {data_dir}"
        )
    return "\n".join(lines)


@contextmanager
def _local_broker_if_needed(keep: bool) -> Iterator[LocalBroker | None]:
    """Start the local broker when no bootstrap servers are configured (and stop it after, unless kept).

    Yields the local broker, or None when the bootstrap servers point elsewhere.
    """
    settings = settings_or_exit()
    broker = local_broker() if settings.uses_local_broker else None
    started = False
    if broker is not None and not broker.status().answering:
        console.print(f"starting the local Kafka broker on {broker.bootstrap} ...")
        try:
            broker.start()
        except BrokerError as exc:
            fail(str(exc))
        started = True
    try:
        yield broker
    finally:
        if broker is not None and started and not keep:
            broker.stop()


@contextmanager
def _demo_deployment(keep: bool, broker: LocalBroker | None) -> Iterator[Settings]:
    """Topics and an app id of the demo's own, so that its comparison is exact; deleted after."""
    run = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    data_dir = Path(settings_or_exit().data_dir) / run
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "DMEDIAN_APP_ID": f"dmedian-{run}",
        "DMEDIAN_TOPIC_NUMBERS": f"{run}-numbers",
        "DMEDIAN_TOPIC_SKETCHES": f"{run}-sketches",
        "DMEDIAN_TOPIC_MEDIANS": f"{run}-medians",
        "DMEDIAN_TOPIC_DEAD_LETTERS": f"{run}-dead-letters",
        "DMEDIAN_DATA_DIR": str(data_dir),
        "DMEDIAN_WEB_PORT": str(free_port()),
    })  # fmt: skip
    settings = ensure_topics(settings_or_exit())
    try:
        yield settings
    finally:
        if keep:  # also after a failure: say what was left behind, and how to remove it
            say(_kept(settings, broker))
        else:
            names = [spec.name for spec in topic_set(settings)] + [f"{settings.app_id}-__assignor-__leader"]
            admin_client(settings).delete_topics(names, operation_timeout=30)


@contextmanager
def _worker(settings: Settings) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """One worker process for the demo, stopped gracefully at the end."""
    log_path = Path(settings.data_dir) / "worker.log"
    console.print(f"starting a worker (log: {log_path}) ...")
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "pipeline", "worker"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield worker, log_path
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
