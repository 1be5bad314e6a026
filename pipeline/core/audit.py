"""The exact audit of a served estimate, in bounded memory, over data read in passes.

``dmedian verify`` re-reads exactly the input a served estimate covers and
checks it. Nothing here holds the data: a :class:`ChunkSource` hands over the
covered numbers chunk by chunk, once per pass (see :mod:`pipeline.core.selection`):

* pass 1 counts, for every served value (and every ``lower``/``upper``, and some
  values of the sketch near each quantile), the numbers below it and at or below
  it. That alone is the exact rank of every served value, so its rank error, in
  memory independent of the data; it also checks each shard's count, rejected
  count, min, max and local median against its snapshot;
* pass 2 collects only the numbers between the two counted values that bracket
  each exact quantile (a few thousand to a few hundred thousand numbers), and
  selects it. A bracket too big for ``max_values`` is narrowed by histogram
  passes first: at most 8 passes in all, whatever the data.

The exact quantile uses the served estimate's own definition (DataSketches'
exclusive rank): the value at 0-based position ``min(floor(q * N), N - 1)`` of
the sorted numbers, so on data small enough for the sketch to be exact, served
equals exact. The rank error does not depend on that choice: it is the distance
from ``q`` to the served value's true rank interval ``[#below / N, #at_or_below / N]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import datasketches
import numpy as np
import numpy.typing as npt

from pipeline.core.selection import ExactSelector, InputChangedError, RankCounter, exclusive_position
from pipeline.core.sketch import QuantileBand

__all__ = [
    "AuditError",
    "AuditOptions",
    "AuditResult",
    "ChunkSource",
    "EstimateAudit",
    "QuantileAudit",
    "ServedEstimate",
    "ServedQuantile",
    "ShardAudit",
    "ShardChunk",
    "ShardClaim",
    "run_audit",
    "sketch_hints",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

AuditError = InputChangedError
"""The input changed between passes (retention, a recreated topic): there is no exact answer."""


@dataclass(frozen=True)
class AuditOptions:
    """How much the audit may hold, and how it narrows."""

    max_values: int = 8_000_000
    """Most numbers held at once in selection windows (8 bytes each; 64 MB at the default)."""
    histogram_bins: int = 4096
    """Bins of a narrowing pass: each divides a too-big window's key range by this."""


@dataclass(frozen=True)
class ShardChunk:
    """Some covered numbers of one shard, as a :class:`ChunkSource` hands them over."""

    shard: int
    """The shard (input partition) they come from."""
    values: FloatArray
    """Accepted numbers, decoded exactly as the shard decodes them."""
    rejected: int = 0
    """Rejected messages or elements in the records these came from (as a shard counts them)."""


class ChunkSource(Protocol):
    """The covered input, readable once per pass, always the same numbers."""

    def read(self, pass_number: int) -> Iterable[ShardChunk]:
        """Every covered number once, in chunks; ``pass_number`` counts from 1."""
        ...

    def problems(self) -> Mapping[int, Sequence[str]]:
        """Per shard, what the source could not read as claimed (after pass 1)."""
        ...


@dataclass(frozen=True)
class ServedQuantile:
    """One served quantile, as a record carries it."""

    q: float
    """The quantile's rank."""
    band: QuantileBand
    """The served value and the values at ranks q -+ rank error."""


@dataclass(frozen=True)
class ServedEstimate:
    """An estimate to audit: a ``medians`` record, or the snapshots merged again."""

    label: str
    """Short name in the output (``served``, ``re-merged``)."""
    source: str
    """Where it came from, for the reader of the report."""
    n: int
    """The count it claims to cover."""
    rank_error: float
    """Its stated bound on the rank error."""
    quantiles: tuple[ServedQuantile, ...]
    """Its quantiles, the median included."""


@dataclass(frozen=True)
class ShardClaim:
    """What a shard's latest snapshot says about the input it covers."""

    shard: int
    """The shard (input partition)."""
    n: int
    """Accepted numbers it counted."""
    rejected: int
    """Rejected messages or elements it counted."""
    min: float
    """Its smallest number (NaN when empty)."""
    max: float
    """Its largest number (NaN when empty)."""
    median: float
    """Its local median (NaN when empty)."""
    rank_error: float
    """Its sketch's stated rank error bound."""
    last_offset: int
    """The last source offset it covers (-1: none)."""


@dataclass(frozen=True)
class QuantileAudit:
    """One served quantile against the exact data."""

    q: float
    """The quantile."""
    band: QuantileBand
    """The served value and its lower/upper values."""
    exact: float
    """The exact quantile of the covered numbers (see the module docs for the definition)."""
    below: int
    """Covered numbers strictly below the served value."""
    at_or_below: int
    """Covered numbers at or below the served value."""
    n: int
    """Covered numbers counted."""
    bound: float
    """The stated rank error bound."""

    @property
    def rank_low(self) -> float:
        """The served value's lowest true rank."""
        return self.below / self.n

    @property
    def rank_high(self) -> float:
        """The served value's highest true rank."""
        return self.at_or_below / self.n

    @property
    def rank_error(self) -> float:
        """Distance from ``q`` to the served value's true rank interval (0 inside it; inf if NaN)."""
        if math.isnan(self.band.value):
            return math.inf
        return max(self.rank_low - self.q, self.q - self.rank_high, 0.0)

    @property
    def inside(self) -> bool:
        """Whether the rank error is within the stated bound."""
        return self.rank_error <= self.bound

    @property
    def band_holds(self) -> bool:
        """Whether the exact quantile lies between the served lower and upper values."""
        return self.band.lower <= self.exact <= self.band.upper


@dataclass(frozen=True)
class EstimateAudit:
    """An estimate's quantiles against the exact data."""

    estimate: ServedEstimate
    """What was audited."""
    quantiles: tuple[QuantileAudit, ...]
    """One per served quantile (none when nothing is covered)."""

    @property
    def ok(self) -> bool:
        """Every quantile inside its bound, and its exact value inside its band."""
        return all(a.inside and a.band_holds for a in self.quantiles)


@dataclass(frozen=True)
class ShardAudit:
    """A shard's snapshot against the input it claims to cover."""

    claim: ShardClaim
    """The snapshot's claims."""
    counted: int
    """Accepted numbers in the covered input, decoded as the shard decodes."""
    rejected: int
    """Rejected messages or elements in the covered input."""
    min: float
    """Smallest covered number (NaN when none)."""
    max: float
    """Largest covered number (NaN when none)."""
    median_below: int
    """Covered numbers strictly below the snapshot's local median."""
    median_at_or_below: int
    """Covered numbers at or below it."""
    source_problems: tuple[str, ...] = ()
    """What the input could not provide (records deleted, input shorter than claimed)."""

    @property
    def median_rank_error(self) -> float:
        """The local median's rank error against this shard's covered numbers (0 when empty)."""
        if self.counted == 0 or math.isnan(self.claim.median):
            return 0.0 if self.counted == 0 else math.inf
        low, high = self.median_below / self.counted, self.median_at_or_below / self.counted
        return max(low - 0.5, 0.5 - high, 0.0)

    @property
    def problems(self) -> tuple[str, ...]:
        """Every disagreement between the snapshot and the input; empty when it checks out."""
        found = list(self.source_problems)
        claim = self.claim
        if self.counted != claim.n:
            lost = "lost" if self.counted > claim.n else "double-counted or invented"
            found.append(f"n: snapshot says {claim.n}, input has {self.counted} ({lost} numbers)")
        if self.rejected != claim.rejected:
            found.append(f"rejected: snapshot says {claim.rejected}, input has {self.rejected}")
        if self.counted and claim.n and (self.min != claim.min or self.max != claim.max):
            found.append(f"min/max: snapshot says {claim.min!r}/{claim.max!r}, input has {self.min!r}/{self.max!r}")
        if self.median_rank_error > claim.rank_error:
            found.append(f"local median rank error {self.median_rank_error:.5f} exceeds {claim.rank_error:.5f}")
        return tuple(found)


@dataclass(frozen=True)
class AuditResult:
    """Everything the audit found."""

    estimates: tuple[EstimateAudit, ...]
    """Each audited estimate."""
    shards: tuple[ShardAudit, ...]
    """Each shard with a snapshot, by shard id."""
    n: int
    """Covered numbers counted over all shards."""
    passes: int
    """Passes over the input."""
    peak_window_values: int
    """Most numbers held at once in selection windows."""

    @property
    def ok(self) -> bool:
        """Every shard checks out and every estimate is inside its bounds."""
        return all(not s.problems for s in self.shards) and all(e.ok for e in self.estimates)


def sketch_hints(
    sketch: datasketches.kll_doubles_sketch, quantiles: Iterable[float], rank_error: float, points: int = 33
) -> list[float]:
    """Values of ``sketch`` around each quantile: candidates that make the exact windows small."""
    if sketch.is_empty():
        return []
    spread = 2 * max(rank_error, 1e-9)
    ranks = {float(r) for q in quantiles for r in np.clip(np.linspace(q - spread, q + spread, points), 0.0, 1.0)}
    return [float(v) for v in sketch.get_quantiles(sorted(ranks))]


@dataclass
class _ShardTally:
    median: float
    counted: int = 0
    rejected: int = 0
    low: float = math.inf
    high: float = -math.inf
    median_below: int = 0
    median_at_or_below: int = 0

    def add(self, chunk: ShardChunk) -> None:
        values = chunk.values
        self.counted += int(values.size)
        self.rejected += chunk.rejected
        if values.size:
            self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
            if not math.isnan(self.median):
                self.median_below += int(np.count_nonzero(values < self.median))
                self.median_at_or_below += int(np.count_nonzero(values <= self.median))


def run_audit(
    source: ChunkSource,
    estimates: Sequence[ServedEstimate],
    claims: Sequence[ShardClaim],
    hints: Iterable[float] = (),
    options: AuditOptions = AuditOptions(),
) -> AuditResult:
    """Audit ``estimates`` and ``claims`` against the numbers ``source`` provides; see the module docs."""
    bands = [s.band for e in estimates for s in e.quantiles]
    counter = RankCounter([*hints, *(v for b in bands for v in (b.value, b.lower, b.upper))])
    tallies = {claim.shard: _ShardTally(claim.median) for claim in claims}
    for chunk in source.read(1):
        counter.add(chunk.values)
        tallies[chunk.shard].add(chunk)
    n = counter.n
    positions = {s.q: exclusive_position(s.q, n) for e in estimates for s in e.quantiles} if n else {}
    selector = ExactSelector(counter, positions.values(), options.max_values, options.histogram_bins)
    passes = 1
    while selector.begin_pass():  # False once every value is known without reading again
        passes += 1
        seen = 0
        for chunk in source.read(passes):
            seen += int(chunk.values.size)
            selector.add(chunk.values)
        if seen != n:
            raise AuditError(f"pass {passes} read {seen} numbers, pass 1 read {n}: the input changed")
        selector.end_pass()
    audits = tuple(
        EstimateAudit(
            e,
            tuple(
                QuantileAudit(
                    s.q, s.band, selector.value(positions[s.q]), *_ranks(counter, s.band.value), n, e.rank_error
                )
                for s in e.quantiles
            )
            if n
            else (),
        )
        for e in estimates
    )
    problems = source.problems()
    shards = tuple(
        ShardAudit(
            c,
            t.counted,
            t.rejected,
            t.low if t.counted else math.nan,
            t.high if t.counted else math.nan,
            t.median_below,
            t.median_at_or_below,
            tuple(problems.get(c.shard, ())),
        )
        for c, t in ((c, tallies[c.shard]) for c in sorted(claims, key=lambda c: c.shard))
    )
    return AuditResult(audits, shards, n, passes, selector.peak_values)


def _ranks(counter: RankCounter, value: float) -> tuple[int, int]:
    return (0, 0) if math.isnan(value) else counter.count(value)
