"""The accuracy battery's streams: hard shapes for a quantile sketch, cut into checkpoints.

A :class:`Stream` is a sequence of chunks; the test produces one chunk, waits for
the record covering everything produced so far, and audits it. A chunk is a list
of :class:`Segment` s, each produced with one ``Deployment.produce`` call: a
format, a batch size and either one fixed partition or round robin over the
partitions. Most numbers travel as float64 blocks and JSON arrays (fast), a few
percent as single JSON numbers, so every decode path feeds the sketches.

Every stream is deterministic for its seed, so a failure can be replayed.
"""

from __future__ import annotations

import enum
import itertools
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.kafka.generate import Distribution, MessageFormat, encode_messages, generate

__all__ = ["CHUNK_FRACTIONS", "Segment", "Stream", "StreamKind", "build_stream", "chunk_messages"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

CHUNK_FRACTIONS = (0.2, 0.25, 0.25, 0.3)
"""How a stream is cut into checkpoints: four chunks, so three checkpoints mid-stream and one at its end."""

SINGLE_SHARE = 0.02
"""Share of each chunk sent as single-number messages (the slow path, kept small)."""
JSON_SHARE = 0.38
"""Share of each chunk sent as JSON arrays; the rest goes as float64 blocks."""


class StreamKind(enum.StrEnum):
    """The shapes the issue asks for."""

    NORMAL = "normal"
    LOGNORMAL = "lognormal"
    PARETO = "pareto"
    """Alpha 1.1: a finite mean, no variance, a tail of huge values."""
    BIMODAL_GAP = "bimodal-gap"
    """Two equal modes far apart: the median falls in an empty gap at every checkpoint."""
    SORTED = "sorted"
    """Ascending over the whole stream: every new number is above every served quantile."""
    REVERSE_SORTED = "reverse-sorted"
    DUPLICATES = "duplicates"
    """95% of the numbers are one value: most quantiles are a tie over a wide range of ranks."""
    DISJOINT_SHARDS = "disjoint-shards"
    """Partition p only gets numbers in [p*1000, p*1000+1), and shards are of unequal sizes."""
    DRIFT = "drift"
    """A mean that moves steadily through the stream."""
    STEP = "step"
    """A sudden jump of the mean in the middle of a chunk."""
    HUGE_OUTLIERS = "huge-outliers"
    """Ordinary numbers plus one +1e300 (from the first chunk) and one -1e300 (from the third)."""


@dataclass(frozen=True)
class Segment:
    """Numbers produced together: one format, one partitioning."""

    values: FloatArray
    """The numbers, in the order they are sent."""
    fmt: MessageFormat
    """How they are packed into messages."""
    batch_size: int
    """Numbers per message for the batch formats."""
    partition: int | None = None
    """The partition of every message; None: messages go round robin over the partitions."""


@dataclass(frozen=True)
class Stream:
    """A stream cut into chunks, each followed by a checkpoint."""

    kind: StreamKind
    """Its shape."""
    chunks: tuple[tuple[Segment, ...], ...]
    """What to produce before each checkpoint."""

    @property
    def size(self) -> int:
        """Numbers in the whole stream."""
        return sum(segment.values.size for chunk in self.chunks for segment in chunk)


def _in_formats(values: FloatArray, partition: int | None = None) -> tuple[Segment, ...]:
    """Split ``values`` (kept in order) into float64 blocks, JSON arrays and single numbers."""
    singles = int(values.size * SINGLE_SHARE)
    arrays = int(values.size * JSON_SHARE)
    blocks = values.size - arrays - singles
    parts = (
        Segment(values[:blocks], MessageFormat.FLOAT64, 500, partition),
        Segment(values[blocks : blocks + arrays], MessageFormat.JSON_ARRAY, 250, partition),
        Segment(values[blocks + arrays :], MessageFormat.SINGLE, 1, partition),
    )
    return tuple(part for part in parts if part.values.size)


def _chunk_sizes(count: int) -> list[int]:
    sizes = [int(count * fraction) for fraction in CHUNK_FRACTIONS[:-1]]
    return [*sizes, count - sum(sizes)]


def _cut(values: FloatArray) -> tuple[tuple[Segment, ...], ...]:
    """Chunks of a stream sent in arrival order, round robin."""
    bounds = np.cumsum(_chunk_sizes(values.size))[:-1]
    return tuple(_in_formats(chunk) for chunk in np.split(values, bounds))


def _bimodal_gap(rng: np.random.Generator, count: int) -> tuple[tuple[Segment, ...], ...]:
    # Each chunk holds exactly as many numbers in each mode, shuffled, so the median
    # of the data at every checkpoint lies between the modes, in [-40, 40] where there is nothing.
    chunks = []
    for size in _chunk_sizes(count):
        low = rng.uniform(-60.0, -40.0, size // 2)
        high = rng.uniform(40.0, 60.0, size - size // 2)
        chunks.append(_in_formats(rng.permutation(np.concatenate([low, high]))))
    return tuple(chunks)


def _duplicates(rng: np.random.Generator, count: int) -> FloatArray:
    others = rng.normal(42.0, 10.0, count)
    return np.where(rng.random(count) < 0.95, 42.0, others)


def _disjoint_shards(rng: np.random.Generator, count: int, partitions: int) -> tuple[tuple[Segment, ...], ...]:
    # Shard p gets a share proportional to p + 1, so some configured quantiles fall exactly at a
    # boundary between two shards' ranges (with 4 shards: 0.1 between shards 0 and 1).
    weights = np.arange(1, partitions + 1) / sum(range(1, partitions + 1))
    chunks = []
    for size in _chunk_sizes(count):
        chunk: list[Segment] = []
        for p in range(partitions):
            values = p * 1000.0 + rng.random(round(size * weights[p]))
            chunk.extend(_in_formats(values, partition=p))
        chunks.append(tuple(chunk))
    return tuple(chunks)


def _huge_outliers(rng: np.random.Generator, count: int) -> tuple[tuple[Segment, ...], ...]:
    chunks = list(_cut(rng.normal(100.0, 15.0, count - 2)))
    # One as a single JSON number (it travels as the text "1e+300"), one inside a float64 block.
    chunks[0] = (*chunks[0], Segment(np.array([1e300]), MessageFormat.SINGLE, 1, partition=1))
    block = np.concatenate([rng.normal(100.0, 15.0, 99), [-1e300]])
    chunks[2] = (*chunks[2], Segment(rng.permutation(block), MessageFormat.FLOAT64, 100, partition=2))
    return tuple(chunks)


def build_stream(kind: StreamKind, count: int, partitions: int, seed: int = 0) -> Stream:
    """The stream ``kind`` of about ``count`` numbers, cut by :data:`CHUNK_FRACTIONS`."""
    rng = np.random.default_rng(seed)
    match kind:
        case StreamKind.NORMAL:
            chunks = _cut(generate(Distribution.NORMAL, count, seed))
        case StreamKind.LOGNORMAL:
            chunks = _cut(generate(Distribution.LOGNORMAL, count, seed))
        case StreamKind.PARETO:
            chunks = _cut(generate(Distribution.PARETO, count, seed))
        case StreamKind.BIMODAL_GAP:
            chunks = _bimodal_gap(rng, count)
        case StreamKind.SORTED:
            chunks = _cut(np.sort(rng.normal(0.0, 1.0, count)))
        case StreamKind.REVERSE_SORTED:
            chunks = _cut(np.sort(rng.normal(0.0, 1.0, count))[::-1].copy())
        case StreamKind.DUPLICATES:
            chunks = _cut(_duplicates(rng, count))
        case StreamKind.DISJOINT_SHARDS:
            chunks = _disjoint_shards(rng, count, partitions)
        case StreamKind.DRIFT:
            chunks = _cut(np.linspace(0.0, 100.0, count) + rng.normal(0.0, 1.0, count))
        case StreamKind.STEP:
            # The jump lands at 60% of the stream: inside the third chunk, not at a checkpoint.
            step = int(count * 0.6)
            chunks = _cut(np.concatenate([rng.normal(0.0, 1.0, step), rng.normal(50.0, 1.0, count - step)]))
        case StreamKind.HUGE_OUTLIERS:
            chunks = _huge_outliers(rng, count)
    return Stream(kind, chunks)


def chunk_messages(chunk: tuple[Segment, ...], partitions: int) -> list[tuple[int, bytes]]:
    """The chunk's messages as (partition, value), in sending order.

    Segments with the same partitioning form a lane, sent in segment order (so a
    sorted stream arrives sorted); round-robin segments continue one another's
    rotation. Lanes are interleaved message by message, so shards fed separately
    progress together, as they would with concurrent sources.
    """
    lanes: dict[int | None, list[tuple[int, bytes]]] = {}
    for segment in chunk:
        lane = lanes.setdefault(segment.partition, [])
        for value in encode_messages(segment.values, segment.fmt, segment.batch_size):
            partition = len(lane) % partitions if segment.partition is None else segment.partition
            lane.append((partition, value))
    interleaved = itertools.zip_longest(*lanes.values())
    return [message for messages in interleaved for message in messages if message is not None]
