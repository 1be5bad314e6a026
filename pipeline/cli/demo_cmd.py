"""``dmedian demo``: the whole pipeline on the local default, checked against the exact median."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from pipeline.cli.broker_cmd import local_broker
from pipeline.cli.common import console, fail, out, settings_or_exit
from pipeline.cli.produce_cmd import produce_numbers
from pipeline.cli.topics_cmd import ensure_topics
from pipeline.cli.watch_cmd import record_table
from pipeline.core.exact import check_rank
from pipeline.kafka.clients import admin_client
from pipeline.kafka.follow import latest_snapshots, wait_for_record
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from pipeline.localbroker import BrokerError, free_port

__all__ = ["demo"]

logger = logging.getLogger(__name__)


def demo(
    count: int = typer.Option(1_000_000, min=3, help="Numbers to generate."),
    keep: bool = typer.Option(False, help="Keep the demo's topics, worker state and the broker afterwards."),
    timeout: float = typer.Option(300.0, help="Seconds to wait for the estimate to cover every number."),
) -> None:
    """Start everything, produce COUNT numbers in all three formats, print served vs exact."""
    settings = settings_or_exit()
    started_broker = False
    if settings.uses_local_broker:
        broker = local_broker()
        if not broker.status().answering:
            console.print(f"starting the local Kafka broker on {broker.bootstrap} ...")
            try:
                broker.start()
            except BrokerError as exc:
                fail(str(exc))
            started_broker = True
    run = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    data_dir = Path(settings.data_dir) / run
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "DMEDIAN_APP_ID": f"dmedian-{run}",
        "DMEDIAN_TOPIC_NUMBERS": f"{run}-numbers",
        "DMEDIAN_TOPIC_SKETCHES": f"{run}-sketches",
        "DMEDIAN_TOPIC_MEDIANS": f"{run}-medians",
        "DMEDIAN_TOPIC_DEAD_LETTERS": f"{run}-dead-letters",
        "DMEDIAN_DATA_DIR": str(data_dir),
        "DMEDIAN_WEB_PORT": str(free_port()),
    })
    settings = settings_or_exit()
    ensure_topics()
    log_path = data_dir / "worker.log"
    console.print(f"starting a worker (log: {log_path}) ...")
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "pipeline", "worker"], stdout=log, stderr=subprocess.STDOUT)
    try:
        values = generate(Distribution.MIXED, count, seed=7)
        thirds = np.array_split(values, 3)
        started = time.monotonic()
        for part, fmt in zip(thirds, (MessageFormat.SINGLE, MessageFormat.JSON_ARRAY, MessageFormat.FLOAT64)):
            console.print(f"producing {part.size:,} numbers as {fmt.value} messages")
            produce_numbers(part, fmt, 1000, 0.0)
        console.print(f"waiting for the global estimate to cover all {count:,} numbers ...")
        record = wait_for_record(settings, lambda r: r.n >= count, timeout, lambda: worker.poll() is not None)
        elapsed = time.monotonic() - started
        if record is None or record.n != count:
            why = "the worker exited" if worker.poll() is not None else f"after {timeout:.0f} s"
            fail(f"the estimate covered n={record.n if record else 0} of {count}: {why}; see {log_path}", code=1)
        out.print(record_table(record))
        report = Table("quantile", "served", "exact", "true rank of served", "rank error", "bound", "within")
        ordered = np.sort(values)
        ok = True
        for q, served in [(0.5, record.median.value)] + [(e.q, e.band.value) for e in record.quantiles]:
            check = check_rank(ordered, q, served)
            ok &= check.within(record.rank_error)
            report.add_row(f"{q:g}", f"{served:.6g}", f"{check.exact:.6g}",
                           f"[{check.rank_low:.5f}, {check.rank_high:.5f}]", f"{check.rank_error:.5f}",
                           f"{record.rank_error:.5f}", "yes" if check.within(record.rank_error) else "NO")
        out.print(report)
        snapshots = latest_snapshots(settings)
        out.print(f"{len(snapshots)} shards, local medians: "
                  + ", ".join(f"{s}: {snapshots[s].median.value:.4g}" for s in sorted(snapshots)))
        out.print(f"{count:,} numbers produced and summarised in {elapsed:.1f} s; "
                  f"served median {record.median.value:.6g} vs exact {np.median(values):.6g}")
        if not ok:
            raise typer.Exit(1)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        if not keep:
            names = [settings.topic_numbers, settings.topic_sketches, settings.topic_medians,
                     settings.topic_dead_letters]
            admin_client(settings).delete_topics(names, operation_timeout=30)
            if started_broker:
                local_broker().stop()
