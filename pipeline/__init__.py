"""DistributedMedian: a running median (and other quantiles) of a sharded Kafka stream."""

__version__ = "0.1.0"
