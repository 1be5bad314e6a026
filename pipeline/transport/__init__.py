"""Faust transports of the pipeline: batch delivery (``dmkafka://``), fetched by aiokafka or librdkafka."""

from pipeline.transport.batches import (
    SCHEME,
    RawBatch,
    RawBatchSchema,
    batch_topic,
    batch_topics,
    deliver_in_batches,
    fetch_with_librdkafka,
    resume_from_state,
)
from pipeline.transport.batching import BatchConsumer, BatchTransport, register_transport

__all__ = [
    "SCHEME",
    "BatchConsumer",
    "BatchTransport",
    "RawBatch",
    "RawBatchSchema",
    "batch_topic",
    "batch_topics",
    "deliver_in_batches",
    "fetch_with_librdkafka",
    "register_transport",
    "resume_from_state",
]
