"""The ``dmedian`` command tree, and its one way to fail.

Every command fails alike: one line on stderr naming the cause and the setting or
command that fixes it, and an exit code from :class:`pipeline.errors.ExitCode`.
Commands raise :class:`~pipeline.errors.OperatorError` (or let a Kafka error
through); :func:`main` alone prints them. ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback

import typer
from confluent_kafka import KafkaException

from config import ConfigError, load_settings
from pipeline.cli.broker_cmd import broker_cli
from pipeline.cli.common import console
from pipeline.cli.demo_cmd import demo
from pipeline.cli.produce_cmd import produce
from pipeline.cli.replay_cmd import replay
from pipeline.cli.source_cmd import ingest_sketch, source, sources_cli
from pipeline.cli.topics_cmd import topics_cli
from pipeline.cli.verify_cmd import verify
from pipeline.cli.watch_cmd import shards, watch
from pipeline.cli.worker_cmd import worker
from pipeline.errors import OperatorError, from_kafka

__all__ = ["build_cli", "main"]

logger = logging.getLogger(__name__)

_verbose = False
_INTERRUPTED = 130
"""Exit code after Ctrl-C, as shells report SIGINT."""


def _options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="On failure, show the traceback; log librdkafka's connection attempts too."
    ),
) -> None:
    """DistributedMedian: a running median and quantiles of a sharded Kafka stream."""
    global _verbose  # noqa: PLW0603  # read by main()'s handler after the command returns
    _verbose = verbose
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("pipeline.kafka.rdkafka").setLevel(logging.DEBUG)


def build_cli() -> typer.Typer:
    """Assemble the command tree."""
    cli = typer.Typer(
        name="dmedian",
        help="DistributedMedian: a running median and quantiles of a sharded Kafka stream.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    cli.callback()(_options)
    cli.add_typer(broker_cli, name="broker")
    cli.add_typer(topics_cli, name="topics")
    cli.command()(worker)
    cli.command()(produce)
    cli.command()(watch)
    cli.command()(shards)
    cli.command()(demo)
    cli.command()(verify)
    cli.command()(replay)
    cli.command()(source)
    cli.add_typer(sources_cli, name="sources")
    cli.command("ingest-sketch")(ingest_sketch)
    return cli


def _operator_error(exc: BaseException) -> OperatorError:
    """What went wrong, for the operator: the error itself, or a Kafka or timeout error named."""
    if isinstance(exc, OperatorError):
        return exc
    try:
        settings = load_settings()
    except ConfigError:
        settings = None
    if isinstance(exc, KafkaException) and settings is not None:
        return from_kafka(exc, settings)
    if isinstance(exc, TimeoutError):
        return OperatorError(f"gave up waiting for Kafka: {exc} (the wait is DMEDIAN_KAFKA_TIMEOUT_MS)")
    return OperatorError(f"unexpected {type(exc).__name__}: {exc} (run with --verbose for the traceback)")


def main() -> None:
    """Entry point of ``dmedian`` and ``python -m pipeline``."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        build_cli()()
    except Exception as exc:  # the one place every failure becomes one line and an exit code
        error = _operator_error(exc)
        if _verbose:
            traceback.print_exception(exc)
        message = " ".join(str(error).split())  # one line, whatever the message held
        console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(int(error.exit_code))
    except KeyboardInterrupt:
        sys.exit(_INTERRUPTED)
