"""The error budget a shard spends before it must send a snapshot.

The aggregator serves, for each tracked quantile q, a value x_q whose rank in the
numbers its snapshots reflect (N of them) is within the sketch's error eps of q.
A shard's numbers that arrived since its last snapshot (U of them, B of which are
at or below x_q) are not reflected. Over all numbers, the true rank of x_q is off
from q by at most::

    (|R - qN| + sum_i |B_i - q U_i|) / (N + sum_i U_i)  <=  eps + theta

provided every shard keeps ``|B_i - q U_i| <= theta * (N / S + U_i)`` (S at least
the number of shards). Each shard checks that after every batch, for the values
of the latest record it has seen, and sends a snapshot (resetting U_i to 0)
before it would break. The ``+ theta * U_i`` term is allowed because the
denominator grows with the unsent numbers too; it is what lets a stationary
shard stay silent for long stretches (its B_i - q U_i is a zero-mean random walk,
which does not keep up with a budget that grows linearly in U_i).

The served value changes with every record, so a count against one fixed value
is not enough: when a newer record moves x_q, the shard must know how many of
its unsent numbers lie at or below the *new* value without having kept them. So
the tracker counts its unsent numbers at or below a grid of values, fixed at
each snapshot around the tracked quantiles (fine cells of ``theta/8`` of the
shard's own rank near each x_q, coarse cells elsewhere). For any later value x
between two grid points g < x <= g', the count is known to lie between the counts
at g and g', which is all the check needs: it bounds ``|B_i(x) - q U_i|`` from
both sides. A value outside the grid, or a shard with no grid yet, gives the
trivial bounds 0 and U_i, so the shard sends a snapshot unless U_i is tiny.

The counts cost almost nothing per number, because most batches need no check.
One number moves ``|B_i - q U_i|`` (through either grid bound) by at most
``max(q, 1 - q)`` and the allowance by exactly theta, so after a check that
found a margin m below the allowance, the next ``m / (max(q, 1 - q) - theta)``
numbers cannot break it while the record and the grid stay the same. Until then a
batch is only kept (a reference, no pass over it); when a check is due (or the
kept numbers pass a memory cap) they are sorted once and the grid points are
looked up in them, which gives exactly the counts the check needs (a vectorised
sort of float32 keys costs 2-4 ns per number, and the grid sits at float32 cells' tops
so that no number's key leaves a count in doubt; a ``searchsorted`` of each unsorted
number into the grid cost over ten times that, more than the sketch update itself).
A snapshot drops what was kept uncounted: the next grid starts from zero.

This module holds the pure parts: :class:`GlobalView` (what a shard knows of the
latest record) and :class:`BudgetTracker` (the counts, checked only when they could matter);
what the aggregator knows of the shards' progress messages is in :mod:`pipeline.core.liveness`.
The rules that use them are in :mod:`pipeline.core.emission`.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from dataclasses import dataclass, field

import datasketches
import numpy as np
import numpy.typing as npt

from pipeline.core.liveness import ShardLiveness  # moved; re-exported for existing imports
from pipeline.core.wire import MedianRecord

__all__ = ["BudgetTracker", "GlobalView", "GridOptions", "ShardLiveness"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlobalView:
    """What a shard takes from the latest ``medians`` record: the values it must vouch for."""

    quantiles: tuple[float, ...]
    """The tracked ranks, ascending (every quantile of the record, and 0.5 for the median)."""
    values: tuple[float, ...]
    """The served value of each tracked rank, aligned with ``quantiles``."""
    n: int
    """The record's ``n``: numbers reflected in the merged sketch."""
    shards: int
    """Shards with a snapshot in the estimate: the record's ``shards`` plus its ``sources`` (edge
    shards share the budget as partition shards do)."""
    theta: float | None
    """The record's error budget (None: the aggregator states none)."""
    ts: int
    """The record's publication time, epoch milliseconds."""

    @classmethod
    def from_record(cls, record: MedianRecord) -> GlobalView | None:
        """The view of ``record``; None when it serves no value yet (an empty estimate)."""
        served = {estimate.q: estimate.band.value for estimate in record.quantiles}
        served.setdefault(0.5, record.median.value)
        pairs = sorted((q, x) for q, x in served.items() if not math.isnan(x))
        if record.n <= 0 or not pairs:
            return None
        return cls(
            tuple(q for q, _ in pairs),
            tuple(x for _, x in pairs),
            record.n,
            record.shards + record.sources,
            record.theta,
            record.ts,
        )


@dataclass(frozen=True)
class GridOptions:
    """Where the tracker counts. More points: tighter bounds, a little more work per number."""

    cell_fraction: float = 0.125
    """Width of a fine cell, as a fraction of theta, in the shard's own ranks. The count inside one
    cell is the check's uncertainty, so it must stay well below the ``theta * U`` part of the budget."""
    fine_span: float = 0.03
    """How far (in the shard's own ranks) the fine cells reach on each side of a tracked value:
    how far a later record may move x_q before the shard loses precision."""
    coarse_cells: int = 100
    """Cells of equal rank over the whole shard, so a value that left the fine zone still has bounds."""
    max_fine_points: int = 512
    """Cap on fine points per tracked value (a tiny theta would ask for very many)."""
    max_uncounted: int = 1 << 14
    """Numbers kept uncounted at most (8 bytes each: 128 KB per shard) while no check is due; past
    this they are counted at once, so memory stays bounded however long the shard stays quiet, and
    however many shards a worker owns. Counting in chunks of this size costs no more per number."""

    def __post_init__(self) -> None:
        if not 0.0 < self.cell_fraction <= 1.0:
            raise ValueError(f"cell_fraction must be in (0, 1], got {self.cell_fraction}")
        if not 0.0 <= self.fine_span <= 1.0 or min(self.coarse_cells, self.max_fine_points, self.max_uncounted) < 1:
            raise ValueError("fine_span must be in [0, 1]; coarse_cells, max_fine_points, max_uncounted at least 1")


_MAX_IN_DOUBT = 8
"""Grid points whose count a float32 sort leaves in doubt, beyond which a float64 sort is cheaper."""

_FLOAT32_BEYOND = 2.0**128
"""Where float32's range ends (its largest value plus one step): the float64 stand-in for its infinities."""


def _float32_cell_tops(grid: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each grid value moved up to the largest float64 that rounds to the same float32 (sorted, unique).

    A number rounds to that float32 or a smaller one exactly when it is at or below the cell's
    top, so a count of float32 keys at or below the key is the exact count at the top: a sort of
    float32 keys then counts every grid point exactly, with no number left in doubt. Grid values
    are the stream's own numbers (the sketch's items), so without this, numbers equal to a grid
    value left it in doubt in most counts, and the float64 sort they fell back to cost three
    times the float32 one. A grid point moves by at most half a float32 step (3e-8 of it): any
    grid gives sound bounds.
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        keys = grid.astype(np.float32)
        after = np.nextafter(keys, np.float32(np.inf))
        low = np.where(keys == -np.inf, -_FLOAT32_BEYOND, keys.astype(np.float64))
        high = np.where(after == np.inf, _FLOAT32_BEYOND, after.astype(np.float64))
        middle = np.where(keys == np.inf, np.inf, (low + high) / 2.0)  # exact: float32 needs 24 of 53 bits
        # The midpoint itself rounds to the even neighbour: it is in this cell only if that is this key.
        tops = np.where(middle.astype(np.float32) == keys, middle, np.nextafter(middle, -np.inf))
    return np.unique(tops)


def _at_or_below(batches: list[npt.NDArray[np.float64]], grid: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """How many numbers of ``batches`` are at or below each value of the sorted ``grid``, exactly.

    One sort, then one lookup per grid point. The sort is of float32 keys (half the
    bytes: about twice as fast as float64). Rounding to float32 is monotone, so a key
    below grid[i]'s key is a number below grid[i] and a key above it a number above.
    At a float32 cell's top (:func:`_float32_cell_tops`, how the tracker lays its grid)
    a key equal to grid[i]'s is a number at or below it too. Anywhere else, numbers
    whose key equals grid[i]'s leave the count in doubt, and those few grid points are
    counted in float64.
    """
    with np.errstate(over="ignore", under="ignore"):  # beyond float32's range: +-inf or 0, still in order
        keys = np.concatenate(batches, dtype=np.float32)
        grid_keys = grid.astype(np.float32)
        tops = np.nextafter(grid, np.inf).astype(np.float32) > grid_keys
    keys.sort()
    below = np.searchsorted(keys, grid_keys, side="left")
    at_or_below = np.searchsorted(keys, grid_keys, side="right")
    counts = np.where(tops, at_or_below, below)
    in_doubt = np.flatnonzero(~tops & (at_or_below > below))
    if in_doubt.size > _MAX_IN_DOUBT:  # many ties with the grid (integers, say): sort the numbers themselves
        values = np.concatenate(batches)
        values.sort()
        return np.searchsorted(values, grid, side="right")
    for i in in_doubt.tolist():
        counts[i] = sum(int(np.count_nonzero(batch <= grid[i])) for batch in batches)
    return counts


@functools.lru_cache(maxsize=16)
def _rank_pattern(theta: float, options: GridOptions) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The fine cells' rank offsets around a centre, and the coarse cells' ranks (the same at every snapshot)."""
    step = theta * options.cell_fraction
    half = min(math.ceil(options.fine_span / step), options.max_fine_points // 2)
    return step * np.arange(-half, half + 1, dtype=np.float64), np.linspace(0.0, 1.0, options.coarse_cells + 1)


def _grid_around(
    view: GlobalView | None,
    expected: tuple[float, ...],
    sketch: datasketches.kll_doubles_sketch | None,
    theta: float,
    options: GridOptions,
) -> npt.NDArray[np.float64]:
    """Grid points: the tracked values, and the shard's own quantiles around them and across its range.

    Before any record, the shard centres the fine cells on its own quantiles at the
    ``expected`` ranks: with similar shards the first record's values fall among them.
    """
    parts = [np.asarray(view.values if view is not None else (), dtype=np.float64)]
    if sketch is not None and not sketch.is_empty():
        offsets, coarse = _rank_pattern(theta, options)
        centres = np.array([sketch.get_rank(x, True) for x in view.values] if view is not None else expected)
        fine = np.clip(centres[:, None] + offsets, 0.0, 1.0).ravel()
        # Repeated ranks give repeated values, which the unique below drops.
        parts.append(np.asarray(sketch.get_quantiles(np.concatenate((fine, coarse)).tolist(), True), dtype=np.float64))
    grid = np.concatenate(parts)
    return _float32_cell_tops(grid[~np.isnan(grid)])


@dataclass
class BudgetTracker:
    """One shard's unsent numbers, counted at or below a grid fixed at its last snapshot."""

    theta: float
    """The shard's error budget (the record's, if smaller, is used instead)."""
    shards_hint: int = 1
    """A lower bound on the number of shards (the input topic's partitions): the budget is split
    over at least this many, so a record that does not count every shard yet cannot over-spend it."""
    expected: tuple[float, ...] = (0.5,)
    """The ranks the records will serve (the configured quantiles): where to count before any record."""
    options: GridOptions = field(default_factory=GridOptions)
    """Where to count."""
    unsent: int = 0
    """Numbers observed since the last snapshot (U)."""
    view: GlobalView | None = None
    """The latest record seen (None: no record yet)."""
    _grid: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0), init=False, repr=False)
    """Sorted grid values (see :attr:`grid`)."""
    _grid_from: datasketches.kll_doubles_sketch | None = field(default=None, init=False, repr=False)
    """The shard's sketch, while the grid a snapshot asked for is not laid yet (None: laid)."""
    _grid_view: GlobalView | None = field(default=None, init=False, repr=False)
    """The record the grid goes around: the latest at the snapshot."""
    answered: bool = False
    """Whether a snapshot went out since :attr:`view` arrived. Then no record the shard knows
    reflects it yet, and another snapshot would not change what the latest record covers:
    the shard waits for the next record (and checks against it) instead of sending again."""
    _counted: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64), init=False, repr=False)
    """Counted unsent numbers at or below each grid value (the rest wait in ``_uncounted``)."""
    _uncounted: list[npt.NDArray[np.float64]] = field(default_factory=list, init=False, repr=False)
    """Batches observed but not yet counted against the grid."""
    _uncounted_size: int = field(default=0, init=False, repr=False)
    _quiet_until: int = field(default=-1, init=False, repr=False)
    """While ``unsent`` is at most this, :meth:`over_budget` is known to be False (-1: check next time)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.theta < 1.0:
            raise ValueError(f"theta must be in (0, 1), got {self.theta}")
        if self.shards_hint < 1:
            raise ValueError(f"shards_hint must be at least 1, got {self.shards_hint}")
        if not all(0.0 <= q <= 1.0 for q in self.expected):
            raise ValueError(f"expected ranks must be in [0, 1], got {self.expected}")

    def see(self, view: GlobalView | None) -> None:
        """Take a newer record's values; the grid stays (it must describe the unsent numbers)."""
        if view is not None and view != self.view:
            self.view = view
            self.answered = False
            self._quiet_until = -1  # new values and a new allowance: the next call checks

    def anchor(self, sketch: datasketches.kll_doubles_sketch | None) -> None:
        """A snapshot was sent: nothing is unsent any more; a new grid goes around the latest values.

        The grid is laid when first needed (the next numbers, or a look at it), from ``sketch``
        as it is then: the tracker keeps a reference to it, and the caller may go on updating it.
        Most of a snapshot's cost was laying the grid (a hundred quantile look-ups), and a shard
        that gets no number before its next snapshot, or goes to another worker, needs none:
        after a takeover, the first snapshots of thousands of restored shards cost a tick half.
        Any grid gives sound bounds (the counts at it are exact); a later sketch only centres
        it on more of the shard's numbers. It goes around the values of the latest record at
        the snapshot, as if laid then.
        """
        self.unsent = 0
        self.answered = self.view is not None
        self._grid_from, self._grid_view = sketch, self.view
        if sketch is None:  # nothing to look up: the grid is the served values, laid now
            self._lay()
        self._uncounted.clear()  # numbers the snapshot now reflects: never counted, never needed
        self._uncounted_size = 0
        self._quiet_until = -1

    def _lay(self) -> None:
        """Lay the grid the last snapshot asked for (no number is unsent or counted yet)."""
        view = self._grid_view
        self._grid = _grid_around(view, self.expected, self._grid_from, self._theta_for(view), self.options)
        self._grid_from = self._grid_view = None
        self._counted = np.zeros(self._grid.size, dtype=np.int64)

    @property
    def grid(self) -> npt.NDArray[np.float64]:
        """Sorted grid values, fixed from the first numbers after the last snapshot (empty: no
        bounds better than 0 and U)."""
        if self._grid_from is not None:
            self._lay()
        return self._grid

    def observe(self, values: npt.NDArray[np.float64]) -> None:
        """Note one batch of accepted numbers: O(1), they are counted when a check needs them.

        The tracker keeps a reference to ``values`` until then: the caller must not change it.
        """
        if values.size == 0:
            return
        if self._grid_from is not None:
            self._lay()  # before any unsent number: every one of them is counted against it
        self.unsent += int(values.size)
        if self._grid.size:
            self._uncounted.append(values)
            self._uncounted_size += int(values.size)
            if self._uncounted_size >= self.options.max_uncounted:
                self._count()

    def _count(self) -> None:
        """Count the kept batches against the grid (exactly; see :func:`_at_or_below`)."""
        if self._uncounted:
            self._counted += _at_or_below(self._uncounted, self._grid)
            self._uncounted.clear()
            self._uncounted_size = 0

    @property
    def uncounted(self) -> int:
        """Unsent numbers kept but not yet counted against the grid."""
        return self._uncounted_size

    @property
    def at_or_below(self) -> npt.NDArray[np.int64]:
        """Unsent numbers at or below each grid value (exact: counts whatever is still uncounted)."""
        if self._grid_from is not None:
            self._lay()
        self._count()
        return self._counted

    def bounds(self, x: float) -> tuple[int, int]:
        """Bounds on the unsent numbers below ``x`` and at or below ``x``: (low, high)."""
        counts = self.at_or_below
        slot = int(np.searchsorted(self.grid, x, side="left"))
        # Numbers <= grid[slot - 1] < x are below x; numbers <= x are <= grid[slot] >= x.
        low = int(counts[slot - 1]) if slot > 0 else 0
        high = int(counts[slot]) if slot < self.grid.size else self.unsent
        return low, high

    @property
    def effective_theta(self) -> float:
        """The smaller of the shard's and the record's budget."""
        return self._theta_for(self.view)

    def _theta_for(self, view: GlobalView | None) -> float:
        theta = view.theta if view is not None else None
        return self.theta if theta is None else min(self.theta, theta)

    def allowance(self) -> float:
        """How far ``B - qU`` may go for the latest record: theta * (N / S + U)."""
        if self.view is None:
            return 0.0
        shards = max(self.view.shards, self.shards_hint, 1)
        return self.effective_theta * (self.view.n / shards + self.unsent)

    def deviation(self, q: float, x: float) -> float:
        """The largest ``|B - qU|`` the unsent numbers may have at value ``x`` (from the grid's bounds)."""
        low, high = self.bounds(x)
        expected = q * self.unsent
        return max(high - expected, expected - low, 0.0)

    def worst_deviation(self) -> float:
        """The largest :meth:`deviation` over the latest record's tracked values."""
        if self.view is None or self.unsent == 0:
            return 0.0
        return max(self.deviation(q, x) for q, x in zip(self.view.quantiles, self.view.values, strict=True))

    def over_budget(self) -> bool:
        """Whether the unsent numbers may have moved a tracked quantile by more than this shard's share
        (and a snapshot would help: none went out since the latest record arrived).

        The same answer as comparing :meth:`worst_deviation` with :meth:`allowance` after every
        batch, but the comparison runs only when the numbers since the last one could have
        closed the margin it found (see the module docs)."""
        if self.view is None or self.answered or self.unsent <= self._quiet_until:
            return False
        worst, allowance = self.worst_deviation(), self.allowance()
        if worst > allowance:
            self._quiet_until = -1
            return True
        # Per number a deviation rises by at most max(q, 1 - q) (H - qU by 1 - q or -q, qU - L by
        # q or q - 1, for fixed grid slots) and the allowance by theta exactly.
        closing = max(max(q, 1.0 - q) for q in self.view.quantiles) - self.effective_theta
        self._quiet_until = self.unsent + _numbers_before_trip(allowance - worst, closing)
        return False


def _numbers_before_trip(margin: float, closing: float) -> int:
    """How many more numbers cannot close ``margin`` when each closes at most ``closing`` of it."""
    if closing <= 0.0:
        return sys.maxsize  # the margin never shrinks while this record stands
    # One number less than the exact figure, so that float rounding can never skip a trip.
    return max(math.floor(margin / closing) - 1, 0)
