"""``dmedian worker``: one Faust worker (start several to scale out)."""

from __future__ import annotations

import logging
from pathlib import Path

import faust
import typer

from pipeline.app.factory import create_app
from pipeline.cli.common import settings_or_exit
from pipeline.cli.topics_cmd import ensure_topics

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
    faust.Worker(pipeline.app, loglevel=settings.log_level.upper(), quiet=True).execute_from_commandline()
