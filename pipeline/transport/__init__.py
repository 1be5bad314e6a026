"""Faust transports of the pipeline: batch delivery over aiokafka (``dmkafka://``)."""

from pipeline.transport.batches import (
    SCHEME,
    RawBatch,
    RawBatchSchema,
    batch_topic,
    batch_topics,
    deliver_in_batches,
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
    "register_transport",
    "resume_from_state",
]
