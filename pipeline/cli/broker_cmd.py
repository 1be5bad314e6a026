"""``dmedian broker``: the embedded local Kafka broker."""

from __future__ import annotations

import logging

import typer

from pipeline.cli.common import console, fail, settings_or_exit
from pipeline.localbroker import BrokerError, LocalBroker, LocalBrokerOptions

__all__ = ["broker_cli", "local_broker"]

logger = logging.getLogger(__name__)

broker_cli = typer.Typer(help="Run a single-node Kafka 4.1.1 broker on 127.0.0.1 (fetched from Maven Central).")


def local_broker(port: int | None = None) -> LocalBroker:
    """The local broker on ``port`` (default: the ``local_broker_port`` setting)."""
    settings = settings_or_exit()
    return LocalBroker(LocalBrokerOptions(port=port or settings.local_broker_port))


@broker_cli.command("start")
def start(port: int | None = typer.Option(None, help="Client port (default: local_broker_port).")) -> None:
    """Fetch Kafka if needed, format storage once, start the broker and wait until it answers."""
    broker = local_broker(port)
    try:
        broker.start()
    except BrokerError as exc:
        fail(str(exc))
    console.print(f"broker ready on {broker.bootstrap}")


@broker_cli.command("stop")
def stop(port: int | None = typer.Option(None, help="Client port (default: local_broker_port).")) -> None:
    """Stop the local broker."""
    local_broker(port).stop()
    console.print("broker stopped")


@broker_cli.command("status")
def status(port: int | None = typer.Option(None, help="Client port (default: local_broker_port).")) -> None:
    """Say whether the local broker runs and answers."""
    state = local_broker(port).status()
    word = "running" if state.running else "stopped"
    typer.echo(f"{word} pid={state.pid} bootstrap={state.bootstrap} answering={state.answering} home={state.home}")
    if not state.running:
        raise typer.Exit(1)
