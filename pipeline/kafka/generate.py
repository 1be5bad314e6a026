"""Synthetic streams for demos, tests and benchmarks, and their message encodings."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import orjson

from pipeline.core.codec import encode_float64_block

__all__ = ["Distribution", "MessageFormat", "encode_messages", "generate"]

logger = logging.getLogger(__name__)


class Distribution(enum.StrEnum):
    """Shapes of synthetic data."""

    NORMAL = "normal"
    LOGNORMAL = "lognormal"
    PARETO = "pareto"
    UNIFORM = "uniform"
    BIMODAL = "bimodal"
    SORTED = "sorted"
    MIXED = "mixed"


class MessageFormat(enum.StrEnum):
    """How numbers are packed into message values."""

    SINGLE = "single"
    """One JSON number per message."""
    JSON_ARRAY = "json-array"
    """A JSON array of ``batch_size`` numbers per message."""
    FLOAT64 = "float64"
    """A ``DMF8`` float64 block of ``batch_size`` numbers per message."""


def generate(distribution: Distribution, count: int, seed: int = 0) -> npt.NDArray[np.float64]:
    """``count`` numbers drawn from ``distribution`` (deterministic for a seed)."""
    if distribution is Distribution.MIXED:
        parts = [
            generate(d, count // 3 + (i < count % 3), seed + i)
            for i, d in enumerate((Distribution.NORMAL, Distribution.PARETO, Distribution.SORTED))
        ]
        return np.concatenate(parts)
    rng = np.random.default_rng(seed)
    draw: dict[Distribution, Callable[[], npt.NDArray[np.float64]]] = {
        Distribution.NORMAL: lambda: rng.normal(100.0, 15.0, count),
        Distribution.LOGNORMAL: lambda: rng.lognormal(3.0, 1.0, count),
        # Heavy-tailed: alpha 1.1 has a finite mean but no variance.
        Distribution.PARETO: lambda: (rng.pareto(1.1, count) + 1.0) * 10.0,
        Distribution.UNIFORM: lambda: rng.uniform(-1000.0, 1000.0, count),
        # Two modes with a gap at the median, the worst case for interpolating estimators.
        Distribution.BIMODAL: lambda: np.where(
            rng.random(count) < 0.5, rng.normal(-50.0, 5.0, count), rng.normal(50.0, 5.0, count)
        ),
        Distribution.SORTED: lambda: np.sort(rng.normal(0.0, 1.0, count)),
    }
    return draw[distribution]()


def encode_messages(values: npt.NDArray[np.float64], fmt: MessageFormat, batch_size: int = 1000) -> Iterator[bytes]:
    """Message values carrying ``values`` in order, in format ``fmt``."""
    if fmt is MessageFormat.SINGLE:
        # orjson writes the shortest repr that round-trips exactly.
        for value in values.tolist():
            yield orjson.dumps(value)
        return
    for start in range(0, values.size, batch_size):
        chunk = values[start : start + batch_size]
        yield (
            orjson.dumps(chunk, option=orjson.OPT_SERIALIZE_NUMPY)
            if fmt is MessageFormat.JSON_ARRAY
            else encode_float64_block(chunk)
        )
