"""The private Faust and aiokafka names the batch transport depends on, for a guard test."""

from __future__ import annotations

__all__ = ["FAUST_INTERNALS"]

FAUST_INTERNALS = (
    "faust.transport.consumer:Consumer.getmany",  # calls _to_message only for what it yields
    "faust.transport.consumer:Consumer._wait_next_records",
    "faust.transport.consumer:ThreadDelegateConsumer._getmany",
    "faust.transport.consumer:Consumer._drain_messages",  # gap and drop decisions by _read_offset
    "faust.transport.consumer:Consumer._new_offset",
    "faust.transport.consumer:Consumer._acked",  # instance attributes, declared as class annotations
    "faust.transport.consumer:Consumer._acked_index",
    "faust.transport.consumer:Consumer._committed_offset",
    "faust.transport.consumer:Consumer._read_offset",
    "faust.transport.consumer:Consumer._paused_partitions",  # Faust's pauses, mirrored for librdkafka
    "faust.transport.consumer:Consumer._buffered_partitions",  # getmany yields these too
    "faust.transport.consumer:ConsumerThread.on_partitions_assigned",  # batch partitions paused in aiokafka
    "faust.transport.drivers.aiokafka:Consumer._to_message",
    "faust.transport.drivers.aiokafka:Consumer._new_consumer_thread",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.verify_event_path",  # skipped for paused ones
    "aiokafka.consumer.fetcher:PartitionRecords._unpack_records",  # replaced for raw records
    "aiokafka.consumer.fetcher:READ_UNCOMMITTED",
    "faust.transport.drivers:TRANSPORTS.aliases",
    "faust.tables.recovery:Recovery._resume_streams",  # perform_seek, flow_control.resume, resume_flow
    "faust.tables.recovery:Recovery.on_recovery_completed",  # the same order
    # The app's recovery check (pipeline/app/recovery.py): Faust builds its Recovery lazily into
    # TableManager._recovery, and need_recovery() reads these two maps.
    "faust.tables.manager:TableManager._recovery",
    "faust.tables.recovery:Recovery.need_recovery",
    "faust.tables.recovery:Recovery.active_highwaters",
    "faust.tables.recovery:Recovery.active_offsets",
    # Changelog pauses mirrored into aiokafka (pipeline/transport/changelog_pauses.py).
    "faust.transport.consumer:Consumer.pause_partitions",
    "faust.transport.consumer:Consumer.resume_partitions",
    "faust.tables.manager:TableManager.changelog_topics",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._ensure_consumer",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.call_thread",
    # Sends without passes of the event loop (pipeline/transport/sends.py).
    "faust.topics:Topic._get_producer",
)
"""Private Faust and aiokafka names the batch transport overrides or relies on (see ``batching``'s docstring)."""
