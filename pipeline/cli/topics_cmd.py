"""``dmedian topics``: create and describe the topics from their declarative specs."""

from __future__ import annotations

import logging

import typer
from confluent_kafka import KafkaException
from rich.table import Table

from pipeline.cli.common import console, fail, out, settings_or_exit
from pipeline.kafka.clients import admin_client
from topics import topic_set
from topics.admin import TopicConflictError, create_topics, describe_topics

__all__ = ["ensure_topics", "topics_cli"]

logger = logging.getLogger(__name__)

topics_cli = typer.Typer(help="Create or describe the numbers, sketches, medians and dead-letters topics.")


def ensure_topics() -> list[str]:
    """Create missing topics (idempotent); exit with a clear error on a conflict."""
    settings = settings_or_exit()
    try:
        return create_topics(admin_client(settings), topic_set(settings))
    except TopicConflictError as exc:
        fail(str(exc))
    except KafkaException as exc:
        fail(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}")


@topics_cli.command("create")
def create() -> None:
    """Create the topics that are missing; refuse (exit 2) if an existing one conflicts."""
    created = ensure_topics()
    console.print(f"created: {', '.join(created)}" if created else "all topics already exist and match their specs")


@topics_cli.command("describe")
def describe() -> None:
    """Show each topic's spec and how it stands on the cluster."""
    settings = settings_or_exit()
    try:
        states = describe_topics(admin_client(settings), topic_set(settings))
    except KafkaException as exc:
        fail(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}")
    table = Table("topic", "partitions", "configs", "status", "purpose")
    for state in states:
        status = "missing" if not state.exists else ("; ".join(state.conflicts) or "ok")
        configs = ", ".join(f"{k}={v}" for k, v in state.spec.config.items())
        table.add_row(state.spec.name, str(state.spec.partitions), configs, status, state.spec.purpose)
    out.print(table)
