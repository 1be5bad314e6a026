"""The accuracy battery, end to end through Kafka: every served quantile within its stated bound.

Each stream of :mod:`tests.integration.streams` gets its own deployment (one
worker, 4 partitions) and is produced in chunks. After each chunk the test waits
for the record covering exactly what was produced so far and audits every served
quantile against the exact quantiles of that data:

* the served value's true rank (an interval, when the value is tied) is within
  the quantile's own ``rank_bound`` of q;
* the exact quantile lies within the quantile's [lower, upper].

The bound is the one the record states, whatever the emission rule that made
it. Counts are CI-sized; the full-size runs are in the benchmarks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from confluent_kafka import Producer

from pipeline.core.exact import check_rank
from pipeline.core.sketch import QuantileBand
from pipeline.core.wire import MedianRecord
from pipeline.kafka.clients import producer
from pipeline.kafka.produce import produce_values
from tests.integration.harness import Deployment
from tests.integration.streams import Segment, StreamKind, build_stream, chunk_messages

__all__: list[str] = []

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.integration

FloatArray = npt.NDArray[np.float64]

PARTITIONS = 4
STREAM_SIZE = 100_000
QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
"""Served on top of the median: the tails as well as the middle, on every stream."""


@dataclass(frozen=True)
class Served:
    """One served quantile as the record states it."""

    label: str
    """Where it is in the record ("median", or the quantile's key)."""
    q: float
    """Its rank."""
    band: QuantileBand
    """The served value and the values at q -+ bound."""
    bound: float
    """The stated bound on its rank error."""


def _served(record: MedianRecord) -> list[Served]:
    served = [Served("median", 0.5, record.median, record.rank_bound)]
    served += [Served(f"q={e.q}", e.q, e.band, record.bound_of(e)) for e in record.quantiles]
    return served


def _audit(record: MedianRecord, ordered: FloatArray) -> list[str]:
    """Every way the record misstates the data: empty when each served quantile keeps its bound."""
    problems = []
    for served in _served(record):
        check = check_rank(ordered, served.q, served.band.value)
        where = (
            f"{served.label}: served {served.band.value!r} has true ranks [{check.rank_low:.6f}, "
            f"{check.rank_high:.6f}], rank error {check.rank_error:.6f}, stated bound {served.bound:.6f}; "
            f"exact {check.exact!r} in [{served.band.lower!r}, {served.band.upper!r}]?"
        )
        if not check.within(served.bound):
            problems.append(f"rank error over the bound: {where}")
        if not served.band.lower <= check.exact <= served.band.upper:
            problems.append(f"exact quantile outside the band: {where}")
        if not served.band.lower <= served.band.value <= served.band.upper:
            problems.append(f"served value outside its own band: {where}")
    return problems


def _produce(deployment: Deployment, client: Producer, chunk: tuple[Segment, ...]) -> None:
    # One call per chunk on one producer: a producer and its flush per segment cost ~0.5 s each.
    messages = chunk_messages(chunk, PARTITIONS)
    produce_values(
        client,
        deployment.settings.topic_numbers,
        (value for _, value in messages),
        partition=lambda sequence: messages[sequence - 1][0],
    )


@pytest.mark.parametrize("kind", list(StreamKind), ids=str)
def test_every_served_quantile_is_within_its_stated_bound_at_every_checkpoint(
    deploy: Callable[..., Deployment], kind: StreamKind
) -> None:
    deployment = deploy(PARTITIONS, quantiles=",".join(map(str, QUANTILES)))
    deployment.worker()
    stream = build_stream(kind, STREAM_SIZE, PARTITIONS, seed=list(StreamKind).index(kind))
    client = producer(deployment.settings)
    produced: list[FloatArray] = []

    for checkpoint, chunk in enumerate(stream.chunks, start=1):
        _produce(deployment, client, chunk)
        produced.extend(segment.values for segment in chunk)
        ordered = np.sort(np.concatenate(produced))

        record = deployment.wait_for_n(ordered.size)

        context = f"{kind} checkpoint {checkpoint}/{len(stream.chunks)}, n={ordered.size}, record {record}"
        assert record.shards == PARTITIONS, context
        assert record.rejected == 0, context
        assert sorted(e.q for e in record.quantiles) == sorted(QUANTILES), context
        problems = _audit(record, ordered)
        assert not problems, f"{context}:\n" + "\n".join(problems)
        worst = max(check_rank(ordered, s.q, s.band.value).rank_error / s.bound for s in _served(record))
        logger.info("%s: theta %s, worst rank error %.0f%% of its bound", context, record.theta, 100 * worst)
