"""Exact order statistics of data read in passes, holding a bounded number of values.

* :class:`RankCounter` counts, over chunks, the numbers below and at or below a few
  candidate values: the exact rank of each candidate, in memory independent of the data.
* :class:`ExactSelector` then finds the numbers at given sorted positions: each pass
  keeps only the numbers inside a window of values known to hold the wanted one, at
  most ``max_values`` of them, and narrows a window that is too big with a histogram
  over the order-preserving integer keys of the doubles (:func:`float_keys`). A
  histogram pass divides a window's key range by ``bins`` (4096: 12 bits), so even
  adversarial data needs at most ``ceil(64 / 12) + 1 = 7`` passes after counting;
  good candidates (values near the wanted ones) make it one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import numpy.typing as npt

__all__ = ["ExactSelector", "InputChangedError", "RankCounter", "exclusive_position", "float_keys", "key_value"]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
KeyArray = npt.NDArray[np.int64]

# Keys just outside every double (NaN is never data): the open window's ends.
_KEY_BELOW_ALL = -0x7FF0000000000000 - 2
_KEY_ABOVE_ALL = 0x7FF0000000000000 + 1


class InputChangedError(RuntimeError):
    """A later pass saw other numbers than the first (records deleted, a topic recreated)."""


def exclusive_position(q: float, n: int) -> int:
    """0-based position of quantile ``q`` in ``n`` sorted numbers: ``min(floor(q n), n - 1)``.

    ``q`` is taken as the decimal it prints as (0.9 is 9/10), so ``q n`` is not
    pushed across an integer by binary rounding.
    """
    if n <= 0:
        raise ValueError("no position in empty data")
    return min(math.floor(Fraction(repr(float(q))) * n), n - 1)


def float_keys(values: FloatArray) -> KeyArray:
    """Integers ordered exactly as the doubles (-0.0 taken as 0.0; no NaN allowed)."""
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.int64)
    # Negative doubles order backwards as integers: flip their magnitude bits.
    return bits ^ ((bits >> 63) & np.int64(0x7FFFFFFFFFFFFFFF))


def key_value(key: int) -> float:
    """The double whose key is ``key`` (inverse of :func:`float_keys`)."""
    bits = np.array([key], dtype=np.int64)
    bits ^= (bits >> 63) & np.int64(0x7FFFFFFFFFFFFFFF)
    return float(bits.view(np.float64)[0])


class RankCounter:
    """Counts, over chunks, the numbers below and at or below each of a few candidate values."""

    def __init__(self, candidates: Iterable[float]) -> None:
        values = np.asarray(list(candidates), dtype=np.float64) + 0.0
        self.candidates: FloatArray = np.unique(values[~np.isnan(values)])
        """The distinct candidate values, ascending."""
        slots = self.candidates.size + 1
        # Histograms of "how many candidates are <= (resp. <) each number"; their
        # prefix sums are the counts below (resp. at or below) each candidate.
        self._by_right = np.zeros(slots, dtype=np.int64)
        self._by_left = np.zeros(slots, dtype=np.int64)
        self.n = 0
        """Numbers counted."""

    def add(self, values: FloatArray) -> None:
        """Count one chunk."""
        self.n += int(values.size)
        if values.size and self.candidates.size:
            slots = self.candidates.size + 1
            self._by_right += np.bincount(np.searchsorted(self.candidates, values, "right"), minlength=slots)
            self._by_left += np.bincount(np.searchsorted(self.candidates, values, "left"), minlength=slots)

    def counts(self) -> Iterator[tuple[float, int, int]]:
        """(candidate, numbers below it, numbers at or below it), ascending."""
        below, at_or_below = np.cumsum(self._by_right), np.cumsum(self._by_left)
        for j, value in enumerate(self.candidates.tolist()):
            yield value, int(below[j]), int(at_or_below[j])

    def count(self, value: float) -> tuple[int, int]:
        """(below, at or below) for one of the candidates."""
        j = int(np.searchsorted(self.candidates, value + 0.0))
        if j >= self.candidates.size or self.candidates[j] != value:
            raise KeyError(f"{value!r} was not a candidate")
        return int(np.cumsum(self._by_right)[j]), int(np.cumsum(self._by_left)[j])


@dataclass
class _Target:
    """One wanted order statistic: its value once known, else a key window that holds it."""

    position: int
    value: float | None = None
    lo: int = _KEY_BELOW_ALL  # exclusive
    hi: int = _KEY_ABOVE_ALL  # exclusive
    before: int = 0  # numbers with key <= lo
    inside: int = 0  # numbers with lo < key < hi
    # This pass: collected numbers, or histogram edges and counts.
    parts: list[FloatArray] = field(default_factory=list)
    edges: KeyArray | None = None
    histogram: npt.NDArray[np.int64] | None = None


class ExactSelector:
    """Exact order statistics over repeated passes, holding at most ``max_values`` numbers."""

    def __init__(self, counter: RankCounter, positions: Iterable[int], max_values: int, bins: int = 4096) -> None:
        self._max_values = max_values
        self._bins = bins
        self._targets = {p: self._start(p, counter) for p in sorted(set(positions))}
        self.peak_values = 0
        """Most numbers held at once in windows."""

    @staticmethod
    def _start(position: int, counter: RankCounter) -> _Target:
        target, rank = _Target(position), position + 1
        hi_below = counter.n
        for value, below, at_or_below in counter.counts():
            if below < rank <= at_or_below:
                target.value = value
                return target
            if at_or_below < rank:
                target.lo, target.before = int(float_keys(np.array([value]))[0]), at_or_below
            else:  # the first candidate above the wanted number: candidates ascend
                target.hi, hi_below = int(float_keys(np.array([value]))[0]), below
                break
        target.inside = hi_below - target.before
        return target

    @property
    def done(self) -> bool:
        """Whether every order statistic is known."""
        return all(t.value is not None for t in self._targets.values())

    def value(self, position: int) -> float:
        """The number at 0-based ``position`` of the sorted data."""
        value = self._targets[position].value
        if value is None:
            raise RuntimeError(f"position {position} is not resolved yet")
        return value

    def begin_pass(self) -> bool:
        """Plan a pass: collect the smallest windows that fit, histogram the others; False if nothing to read."""
        budget = self._max_values
        for target in sorted(self._pending(), key=lambda t: t.inside):
            width = target.hi - target.lo - 1
            if width == 1:  # one possible key: it is the value, no reading needed
                target.value = key_value(target.lo + 1)
            elif target.inside <= budget:
                budget -= target.inside
                target.parts, target.edges = [], None
            else:
                bins = min(self._bins, width)
                steps = [target.lo + 1 + (i * width) // bins for i in range(bins + 1)]
                target.edges = np.array(steps, dtype=np.int64)
                target.histogram = np.zeros(bins, dtype=np.int64)
        self.peak_values = max(self.peak_values, self._max_values - budget)
        return not self.done

    def add(self, values: FloatArray) -> None:
        """Feed one chunk of this pass."""
        pending = list(self._pending())
        if not values.size or not pending:
            return
        keys = float_keys(values)
        for target in pending:
            in_window = (keys > target.lo) & (keys < target.hi)
            if target.edges is None:
                target.parts.append(values[in_window] + 0.0)
            elif target.histogram is not None:
                slots = np.searchsorted(target.edges, keys[in_window], "right") - 1
                target.histogram += np.bincount(slots, minlength=target.histogram.size)

    def end_pass(self) -> None:
        """Resolve or narrow each window from what the pass saw."""
        for target in self._pending():
            rank = target.position + 1 - target.before  # 1-based, inside the window
            if target.edges is None:
                window = np.concatenate(target.parts) if target.parts else np.empty(0)
                target.parts = []
                self._check(target, int(window.size))
                window.partition(rank - 1)
                target.value = float(window[rank - 1])
                continue
            histogram = target.histogram if target.histogram is not None else np.zeros(0, np.int64)
            self._check(target, int(histogram.sum()))
            cumulative = np.cumsum(histogram)
            j = int(np.searchsorted(cumulative, rank, "left"))
            skipped = int(cumulative[j - 1]) if j else 0
            target.lo, target.hi = int(target.edges[j]) - 1, int(target.edges[j + 1])
            target.before, target.inside = target.before + skipped, int(histogram[j])
            target.edges = target.histogram = None

    def _pending(self) -> Iterator[_Target]:
        return (t for t in self._targets.values() if t.value is None)

    @staticmethod
    def _check(target: _Target, seen: int) -> None:
        if seen != target.inside:
            raise InputChangedError(f"a window held {seen} numbers, pass 1 counted {target.inside}: the input changed")
