"""``dmedian worker``: one Faust worker (start several to scale out)."""

from __future__ import annotations

import logging
from pathlib import Path

import faust
import typer

from pipeline.app.factory import create_app
from pipeline.cli.common import settings_or_exit
from pipeline.cli.topics_cmd import ensure_topics
from pipeline.cli.worker_logs import install_worker_log_filters

__all__ = ["worker"]

logger = logging.getLogger(__name__)


def worker(
    data_dir: Path | None = typer.Option(None, help="State directory (setting data_dir); one per worker."),
    web_port: int | None = typer.Option(None, help="HTTP port (setting web_port); one per worker on a host."),
) -> None:
    """Run a worker: shard agents for its partitions and, on one worker, the aggregator."""
    # The cluster's partition count wins after `dmedian topics grow`.
    settings = ensure_topics(settings_or_exit(data_dir=data_dir, web_port=web_port))
    pipeline = create_app(settings)
    install_worker_log_filters()  # the group forming is not an ERROR (pipeline/cli/worker_logs.py)
    worker_process = faust.Worker(pipeline.app, loglevel=settings.log_level.upper(), quiet=True)
    # Faust's start-up spinner, on at log levels of WARNING and above, sets the root logger to
    # DEBUG so that it can spin on every record: every library's debug call then built a record
    # (aiokafka logs one per partition per fetch loop, which at 8,192 partitions cost 13% of
    # the worker's CPU). Without it the root logger keeps the configured level.
    worker_process.spinner = None
    worker_process.execute_from_commandline()
