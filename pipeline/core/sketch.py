"""A shard's state: its KLL sketch plus the bookkeeping that makes replays idempotent.

The state stores the offset of the last source record it applied. Kafka is
at-least-once: after a crash, records after the last committed offset are
delivered again, and some of them may already be in the restored sketch. The
shard skips every record at or below ``last_offset``, so nothing is counted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import datasketches
import numpy as np
import numpy.typing as npt

from pipeline.core.envelope import EnvelopeError, pack_envelope, unpack_envelope

__all__ = ["STATE_VERSION", "QuantileBand", "ShardState", "quantile_band"]

logger = logging.getLogger(__name__)

STATE_MAGIC = b"DMST"
STATE_VERSION = 1


@dataclass(frozen=True)
class QuantileBand:
    """A quantile estimate with the values at its rank bounds."""

    value: float
    """The estimate at rank q."""
    lower: float
    """The value at rank q - rank_error (the true quantile is not below it, with 99% confidence)."""
    upper: float
    """The value at rank q + rank_error."""


def quantile_band(sketch: datasketches.kll_doubles_sketch, q: float, rank_error: float) -> QuantileBand:
    """The estimate of quantile ``q`` and the values at ranks ``q -+ rank_error``."""
    if sketch.is_empty():
        nan = float("nan")
        return QuantileBand(nan, nan, nan)
    # A band reaching past rank 0 or 1 ends at the exact min or max: the sketch's
    # quantile at 0 or 1 is only the smallest or largest item it kept.
    lower_rank, upper_rank = q - rank_error, q + rank_error
    lower = float(sketch.get_min_value()) if lower_rank <= 0.0 else sketch.get_quantile(min(lower_rank, 1.0))
    upper = float(sketch.get_max_value()) if upper_rank >= 1.0 else sketch.get_quantile(max(upper_rank, 0.0))
    return QuantileBand(sketch.get_quantile(q), lower, upper)


@dataclass
class ShardState:
    """One shard's sketch, the last source offset applied, and its rejection counts."""

    shard: int
    """The shard id: the partition of the input topic."""
    sketch: datasketches.kll_doubles_sketch
    """Every accepted number of this shard, summarised."""
    last_offset: int = -1
    """Offset of the last source record applied (-1: none yet)."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Rejected messages or elements, per reason."""

    @classmethod
    def empty(cls, shard: int, k: int) -> ShardState:
        """A new shard with an empty sketch of accuracy parameter ``k``."""
        return cls(shard, datasketches.kll_doubles_sketch(k))

    @property
    def n(self) -> int:
        """How many numbers the sketch has seen."""
        return int(self.sketch.n)

    def is_new(self, offset: int) -> bool:
        """Whether the record at ``offset`` has not been applied yet."""
        return offset > self.last_offset

    def apply(self, values: npt.NDArray[np.float64], last_offset: int, rejected: Mapping[str, int] = {}) -> None:
        """Add one batch of numbers, decoded from records up to ``last_offset``."""
        if last_offset <= self.last_offset:
            raise ValueError(f"shard {self.shard}: offset {last_offset} was already applied (at {self.last_offset})")
        if values.size:
            self.sketch.update(values)
        for reason, count in rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count
        self.last_offset = last_offset

    def to_bytes(self) -> bytes:
        """Serialize for the state store (the table's changelog)."""
        header = {"shard": self.shard, "last_offset": self.last_offset, "rejected": self.rejected}
        return pack_envelope(STATE_MAGIC, STATE_VERSION, header, self.sketch.serialize())

    @classmethod
    def from_bytes(cls, data: bytes) -> ShardState:
        """Inverse of :meth:`to_bytes`; raises :class:`EnvelopeError` on bad bytes."""
        envelope = unpack_envelope(data, STATE_MAGIC, STATE_VERSION)
        header = envelope.header
        try:
            sketch = datasketches.kll_doubles_sketch.deserialize(envelope.payload)
            return cls(int(header["shard"]), sketch, int(header["last_offset"]), dict(header["rejected"]))
        # Whatever the sketch deserializer raises on damaged bytes (IndexError when
        # truncated, RuntimeError, ...) is a bad state, reported as such.
        except Exception as exc:
            raise EnvelopeError("bad_state", repr(exc)) from None
