"""Builds the one Faust app of a worker from settings.

Everything is registered here, explicitly, in one place: no module-level app,
no registration that depends on import order.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TableT, TopicT

from config import Settings
from pipeline.app.aggregator import AggregatorService
from pipeline.app.api_views import web_application_options
from pipeline.app.collector import CollectorPolicy
from pipeline.app.dashboard import register_dashboard
from pipeline.app.dead_letters import DeadLetterSink
from pipeline.app.global_view import MediansFollower
from pipeline.app.recovery import use_counting_recovery
from pipeline.app.shards import ShardService
from pipeline.app.store import STORE_URL, register_store
from pipeline.app.web import register_views
from pipeline.core.emission import build_shard_rule
from pipeline.kafka.clients import consumer
from pipeline.transport import SCHEME, batch_topic, fetch_with_librdkafka, register_transport
from pipeline.transport.sends import DirectTopic
from topics import topic_set
from topics.specs import SHARD_TABLE

__all__ = ["Pipeline", "broker_credentials", "create_app"]

logger = logging.getLogger(__name__)

_GC_INTERVAL_MS = 1000


@dataclass(frozen=True)
class Pipeline:
    """The app and the services wired into it."""

    app: faust.App
    """The Faust app (run it with a :class:`faust.Worker`)."""
    settings: Settings
    """The settings it was built from."""
    shards: ShardService
    """The shard agent's service."""
    aggregator: AggregatorService
    """The aggregator agent's service."""
    dead_letters: DeadLetterSink
    """Where rejected input goes, with its counters."""


def broker_credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """Faust's credentials for the configured security protocol (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


PRODUCER_BATCH_BYTES = 512 * 1024
"""The app producer's largest batch per partition: about 100 snapshots of k = 200, under the broker's 1 MB cap."""


def create_app(settings: Settings) -> Pipeline:
    """Build the app: topics, tables, agents, timers and web views."""
    specs = topic_set(settings)
    batched = settings.delivery == "batch"
    # Both deliveries use our transport: its resume-from-state guard (a commit that ran
    # ahead of a lost changelog write must not lose records) holds per event too.
    register_transport()
    app = faust.App(
        settings.app_id,
        broker=[f"{SCHEME}://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        autodiscover=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_application_options=web_application_options(),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.numbers_partitions,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        # Faust's 16 KiB batches hold three snapshots: aiokafka sends one batch per
        # partition at a time, so a takeover's announcements (thousands of snapshots to
        # `sketches`) queued behind each round trip. Batches grow only as filled.
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_ms / 3000),
        broker_max_poll_records=settings.batch_max_events,
        # With batch delivery the stream buffer and commit-every count batches, not
        # records: a small queue keeps flow control fine-grained and memory bounded.
        stream_buffer_maxsize=16 if batched else 4096,
        stream_wait_empty=False,
        # Every topic's sends (snapshots, changelog writes) skip Faust's per-message
        # producer check, which cost three passes of the event loop each.
        Topic=DirectTopic,
    )
    if batched and settings.fetcher == "librdkafka":
        fetch_with_librdkafka(app, lambda options: _fetch_consumer(settings, options))
    use_counting_recovery(app)
    # Batch delivery hands the shard agent one event per fetched partition batch.
    numbers = (
        batch_topic(app, specs.numbers.name, partitions=specs.numbers.partitions, internal=False)
        if batched
        else _topic(app, specs.numbers.name, specs.numbers.partitions)
    )
    # The aggregator too gets one event per fetched batch of sketches: Faust's
    # per-record path capped it near 5,000 snapshots/s.
    sketches = (
        batch_topic(app, specs.sketches.name, partitions=specs.sketches.partitions, internal=False)
        if batched
        else _topic(app, specs.sketches.name, specs.sketches.partitions)
    )
    medians = _topic(app, specs.medians.name, specs.medians.partitions)
    dead_letters = DeadLetterSink(_topic(app, specs.dead_letters.name, specs.dead_letters.partitions))

    shard_table = _table(
        app, SHARD_TABLE, specs.numbers.partitions, "KLL sketch and source offset per shard", settings.state_store
    )

    rule = build_shard_rule(
        settings.emission_rule,
        interval_ms=settings.emit_interval_ms,
        theta=settings.error_budget,
        heartbeat_ms=settings.heartbeat_ms,
        growth=settings.geometric_growth,
        shards_hint=settings.numbers_partitions,
        quantiles=settings.quantiles,
    )
    shards = ShardService(app, settings, shard_table, sketches, dead_letters, rule, MediansFollower(settings))
    shards.register(numbers)
    # The group's metadata follows `dmedian topics grow` while workers run: shards of
    # new partitions are real shards, not forgeries, before any worker restarts.
    known_shards = max(specs.numbers.partitions, settings.shard_id_limit)
    aggregator = AggregatorService(
        app,
        settings,
        medians,
        dead_letters,
        shard_limit=lambda: _shard_limit(app, settings.topic_numbers, known_shards),
    )
    aggregator.register(sketches)
    collector = CollectorPolicy(app, _GC_INTERVAL_MS)
    collector.register()
    pipeline = Pipeline(app, settings, shards, aggregator, dead_letters)
    register_views(pipeline)
    register_dashboard(pipeline)
    return pipeline


def _fetch_consumer(settings: Settings, options: dict[str, Any]) -> Any:
    # The batch transport's librdkafka client: connection and security from settings, its options over them.
    overrides = {key.replace(".", "_"): value for key, value in options.items() if key != "group.id"}
    return consumer(settings, options["group.id"], **overrides)


def _shard_limit(app: faust.App, numbers: str, configured: int) -> int:
    found = app.consumer.topic_partitions(numbers)
    return max(found or 0, configured)


def _topic(app: faust.App, name: str, partitions: int) -> TopicT:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        internal=False,
    )


def _table(app: faust.App, name: str, partitions: int, help_text: str, store: str) -> TableT[bytes, bytes]:
    # key_type/value_type bytes make Faust use the raw codec for the changelog too
    # (without them it falls back to JSON, which cannot carry a binary sketch).
    # "one-db": every partition in one RocksDB database (pipeline/app/store.py);
    # "per-partition": Faust's own store, one database per partition.
    one_db = store == "one-db"
    if one_db:
        register_store()
    return app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        help=help_text,
        store=STORE_URL if one_db else "rocksdb://",
        options=_rocksdb_options(one_db),
    )


def _rocksdb_options(one_db: bool) -> dict[str, int]:
    # Faust's defaults (a 64 MiB write buffer, three of them, and a 2 GiB block cache)
    # are per partition's database: with a few KB per shard per batch, memtables kept
    # filling for many minutes and the worker's RSS grew with them. A shard's state is
    # one small value, so small buffers and caches lose nothing. One database for all
    # partitions takes every shard's writes: larger buffers, paid once per worker,
    # flush less often. A new dict per table: Faust's store mutates the one it is given.
    if one_db:
        return {
            "write_buffer_size": 16 * 1024 * 1024,
            "max_write_buffer_number": 2,
            "block_cache_size": 16 * 1024 * 1024,
        }
    return {
        "write_buffer_size": 2 * 1024 * 1024,
        "max_write_buffer_number": 2,
        "block_cache_size": 8 * 1024 * 1024,
        "block_cache_compressed_size": 8 * 1024 * 1024,
    }
