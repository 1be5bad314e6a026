"""The ``dmedian`` command tree."""

from __future__ import annotations

import logging

import typer

from pipeline.cli.broker_cmd import broker_cli
from pipeline.cli.demo_cmd import demo
from pipeline.cli.produce_cmd import produce
from pipeline.cli.replay_cmd import replay
from pipeline.cli.topics_cmd import topics_cli
from pipeline.cli.verify_cmd import verify
from pipeline.cli.watch_cmd import shards, watch
from pipeline.cli.worker_cmd import worker

__all__ = ["build_cli", "main"]

logger = logging.getLogger(__name__)


def build_cli() -> typer.Typer:
    """Assemble the command tree."""
    cli = typer.Typer(
        name="dmedian",
        help="DistributedMedian: a running median and quantiles of a sharded Kafka stream.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    cli.add_typer(broker_cli, name="broker")
    cli.add_typer(topics_cli, name="topics")
    cli.command()(worker)
    cli.command()(produce)
    cli.command()(watch)
    cli.command()(shards)
    cli.command()(demo)
    cli.command()(verify)
    cli.command()(replay)
    return cli


def main() -> None:
    """Entry point of ``dmedian`` and ``python -m pipeline``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_cli()()
