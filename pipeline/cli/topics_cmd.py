"""``dmedian topics``: create, describe and grow the topics from their declarative specs.

Failures (Kafka unreachable, a conflicting topic) are raised as the operator's
errors and printed by the one handler in ``pipeline/cli/main.py``.
"""

from __future__ import annotations

import logging

import typer
from rich.table import Table

from config import Settings
from pipeline.cli.common import out, say, settings_or_exit
from pipeline.errors import TopicMissingError
from pipeline.kafka.clients import admin_client, cluster_partitions_map
from topics import topic_set
from topics.admin import PARTITIONS_PER_REQUEST, AdminOptions, TopicConflictError, create_topics, describe_topics
from topics.growth import adopt_cluster_partitions, grow_partitions

__all__ = ["admin_options", "ensure_topics", "topics_cli"]

logger = logging.getLogger(__name__)

topics_cli = typer.Typer(help="Create, describe or grow the numbers, sketches, medians and dead-letters topics.")

_STEP_OPTION = typer.Option(
    PARTITIONS_PER_REQUEST,
    "--partitions-per-request",
    min=1,
    max=10_000,
    help="Most partitions one request creates or adds (a broker takes at most 10,000).",
)


def admin_options(settings: Settings, partitions_per_request: int = PARTITIONS_PER_REQUEST) -> AdminOptions:
    """Topic operations that wait ``kafka_timeout_ms`` and say what they do on stderr."""
    return AdminOptions(settings.kafka_timeout_s, partitions_per_request, say)


def ensure_topics(settings: Settings | None = None) -> Settings:
    """Create missing topics (idempotent) and return the settings the cluster implies.

    A grown input topic (``dmedian topics grow``) sets ``numbers_partitions``; a
    conflict raises the operator's error (exit 2).
    """
    settings = settings or settings_or_exit()
    cluster_partitions_map(settings)  # Kafka answers, or the one-line error says why not
    admin = admin_client(settings)
    settings = adopt_cluster_partitions(settings, admin)
    create_topics(admin, topic_set(settings), admin_options(settings))
    return settings


@topics_cli.command("create")
def create(partitions_per_request: int = _STEP_OPTION) -> None:
    """Create the topics that are missing; refuse (exit 2) if an existing one conflicts."""
    settings = settings_or_exit()
    cluster_partitions_map(settings)
    options = admin_options(settings, partitions_per_request)
    created = create_topics(admin_client(settings), topic_set(settings), options)
    say(f"created: {', '.join(created)}" if created else "all topics already exist and match their specs")


@topics_cli.command("describe")
def describe() -> None:
    """Show each topic's spec and how it stands on the cluster; exit non-zero if one is missing or conflicts."""
    settings = settings_or_exit()
    cluster_partitions_map(settings)
    states = describe_topics(admin_client(settings), topic_set(settings), admin_options(settings))
    table = Table("topic", "partitions", "configs", "status", "purpose")
    for state in states:
        status = "missing" if not state.exists else ("; ".join(state.conflicts) or "ok")
        if state.untuned and not state.conflicts:
            status += f" (slower: {'; '.join(state.untuned)}; `kafka-configs --alter` can set them)"
        configs = ", ".join(f"{k}={v}" for k, v in state.spec.creation_config.items())
        table.add_row(state.spec.name, str(state.spec.partitions), configs, status, state.spec.purpose)
    out.print(table)
    if any(s.conflicts for s in states):
        raise TopicConflictError("topics do not match their specs", states)
    missing = [s.spec.name for s in states if not s.exists]
    if missing:
        raise TopicMissingError(
            f"missing on {settings.bootstrap_servers}: {', '.join(missing)}; run `dmedian topics create`, "
            "or set DMEDIAN_APP_ID and DMEDIAN_TOPIC_* to the deployment's names"
        )


@topics_cli.command("grow")
def grow(
    partitions: int = typer.Option(..., "--partitions", min=1, help="The new partition count (shards)."),
    partitions_per_request: int = _STEP_OPTION,
) -> None:
    """Add partitions (shards) to the input topic and the shard state changelog together.

    Existing shards keep their state; new shards start empty. Restart the workers
    afterwards: they adopt the new count. Kafka then places keyed messages by the
    new count, which does not matter for a median (every number is counted once,
    in whichever shard receives it).
    """
    settings = settings_or_exit()
    cluster_partitions_map(settings)
    options = admin_options(settings, partitions_per_request)
    plan = grow_partitions(admin_client(settings), topic_set(settings), partitions, options)
    for name, before in plan.before.items():
        change = f"{before} -> {plan.after}" if before < plan.after else f"{before} (already)"
        say(f"{name}: {change} partitions")
    say(
        f"restart the workers to pick up the new shards; set numbers_partitions = {plan.after} "
        f"(DMEDIAN_NUMBERS_PARTITIONS) in your config to match"
    )
