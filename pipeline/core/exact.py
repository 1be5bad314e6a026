"""Exact ranks, to audit an estimate against the data it summarises."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["RankCheck", "check_rank"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankCheck:
    """Where a served value really stands in the data."""

    q: float
    """The quantile that was asked for."""
    value: float
    """The served value."""
    rank_low: float
    """Fraction of the data strictly below ``value``."""
    rank_high: float
    """Fraction of the data at or below ``value``."""
    exact: float
    """The exact quantile of the data (lower median convention: the value at rank ceil(qN))."""

    @property
    def rank_error(self) -> float:
        """Distance from ``q`` to the value's true rank interval (0 when ``q`` is inside it)."""
        return max(self.rank_low - self.q, self.q - self.rank_high, 0.0)

    def within(self, bound: float) -> bool:
        """Whether the served value's true rank is within ``bound`` of ``q``."""
        return self.rank_error <= bound


def check_rank(sorted_data: npt.NDArray[np.float64], q: float, value: float) -> RankCheck:
    """Audit ``value`` served for quantile ``q`` against ``sorted_data`` (ascending)."""
    n = sorted_data.size
    if n == 0:
        raise ValueError("cannot rank against empty data")
    below = int(np.searchsorted(sorted_data, value, side="left"))
    at_or_below = int(np.searchsorted(sorted_data, value, side="right"))
    exact = float(sorted_data[min(max(int(np.ceil(q * n)) - 1, 0), n - 1)])
    return RankCheck(q, value, below / n, at_or_below / n, exact)
