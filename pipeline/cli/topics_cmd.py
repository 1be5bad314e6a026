"""``dmedian topics``: create, describe and grow the topics from their declarative specs."""

from __future__ import annotations

import logging

import typer
from confluent_kafka import KafkaException
from rich.table import Table

from config import Settings
from pipeline.cli.common import console, fail, out, settings_or_exit
from pipeline.kafka.clients import admin_client
from topics import topic_set
from topics.admin import TopicConflictError, create_topics, describe_topics
from topics.growth import GrowthError, adopt_cluster_partitions, grow_partitions

__all__ = ["ensure_topics", "topics_cli"]

logger = logging.getLogger(__name__)

topics_cli = typer.Typer(help="Create, describe or grow the numbers, sketches, medians and dead-letters topics.")


def ensure_topics(settings: Settings | None = None) -> Settings:
    """Create missing topics (idempotent) and return the settings the cluster implies.

    A grown input topic (``dmedian topics grow``) sets ``numbers_partitions``; exits
    with a clear error on a conflict.
    """
    settings = settings or settings_or_exit()
    try:
        admin = admin_client(settings)
        settings = adopt_cluster_partitions(settings, admin)
        create_topics(admin, topic_set(settings))
    except (TopicConflictError, GrowthError) as exc:
        fail(str(exc))
    except KafkaException as exc:
        fail(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}")
    return settings


@topics_cli.command("create")
def create() -> None:
    """Create the topics that are missing; refuse (exit 2) if an existing one conflicts."""
    settings = settings_or_exit()
    try:
        created = create_topics(admin_client(settings), topic_set(settings))
    except TopicConflictError as exc:
        fail(str(exc))
    except KafkaException as exc:
        fail(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}")
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


@topics_cli.command("grow")
def grow(
    partitions: int = typer.Option(..., "--partitions", min=1, help="The new partition count (shards)."),
) -> None:
    """Add partitions (shards) to the input topic and the shard state changelog together.

    Existing shards keep their state; new shards start empty. Restart the workers
    afterwards: they adopt the new count. Kafka then places keyed messages by the
    new count, which does not matter for a median (every number is counted once,
    in whichever shard receives it).
    """
    settings = settings_or_exit()
    try:
        plan = grow_partitions(admin_client(settings), topic_set(settings), partitions)
    except GrowthError as exc:
        fail(str(exc))
    except KafkaException as exc:
        fail(f"cannot grow the topics on {settings.bootstrap_servers}: {exc}")
    for name, before in plan.before.items():
        change = f"{before} -> {plan.after}" if before < plan.after else f"{before} (already)"
        console.print(f"{name}: {change} partitions")
    console.print(
        f"restart the workers to pick up the new shards; set numbers_partitions = {plan.after} "
        f"(DMEDIAN_NUMBERS_PARTITIONS) in your config to match"
    )
