"""Faust transports of the pipeline: batch delivery over aiokafka (``dmkafka://``)."""

from pipeline.transport.batching import (
    SCHEME,
    BatchConsumer,
    BatchTransport,
    RawBatch,
    RawBatchSchema,
    batch_topic,
    batch_topics,
    deliver_in_batches,
    register_transport,
)

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
]
