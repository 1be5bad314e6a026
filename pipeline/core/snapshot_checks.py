"""Plausibility checks of ``sketches`` messages, beyond their wire format.

:meth:`~pipeline.core.wire.SketchSnapshot.from_bytes` refuses bytes that are
not a snapshot: wrong magic or version, truncated, a bad header, a payload that
does not deserialize, a header ``n`` or ``k`` that the sketch contradicts. A
forged message can pass all of that and still poison the global estimate, so
the aggregator also checks what a snapshot *claims* against what it can know:

* the shard id names a partition of the input topic (``unknown_shard``);
* ``n`` (or a heartbeat's ``ingested``) is not more than ``last_offset + 1``
  records could carry, each at most ``max_value_bytes`` long, and the rejected
  count is not negative (``implausible_count``);
* the sketch's own ``n`` equals the total weight of the items it keeps: KLL
  compaction preserves weight exactly, and DataSketches does not check it on
  deserialization, so a sketch patched to say ``n = 10**18`` over 1,000 items
  deserializes fine (``inconsistent``);
* the items are numbers the shards could have accepted: no NaN, no infinity
  unless ``accept_infinity``, all between the sketch's min and max, and the
  header's min, max and median agree with them (``non_finite``, ``inconsistent``);
* the compacted levels are sorted, as KLL requires (``bad_sketch``).

Two kinds, run in two places. The *contents* checks (counts, weights, items,
header statistics) need nothing but the snapshot: ``SketchSnapshot.from_bytes``
runs them (:func:`check_snapshot_contents`), so every reader of ``sketches``,
the aggregator's rebuild and the tools included, refuses such a forgery. The
*context* checks (shard id, count per record, infinities) need the settings and
the partition count: every reader of ``sketches`` runs them (:func:`check_sketches_message`)
through the topic's contract, :func:`pipeline.core.sketches_contract.accept`: the
aggregator on each message it reads, and its rebuild from the compacted topic.

The sketch bytes are read in the standard DataSketches KLL serialization
(doubles): the same layout every DataSketches language reads. Every check
raises :class:`~pipeline.core.wire.SnapshotError` with a reason that the
aggregator dead-letters as ``snapshot_<reason>``. Pure: no Kafka, no Faust.

What no check can catch is a forged snapshot that is self-consistent and
plausible (or a forged tombstone): only broker ACLs that let nothing but the
workers write to ``sketches`` can (see DESIGN.md).
"""

from __future__ import annotations

import itertools
import logging
import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import datasketches
import numpy as np
import numpy.typing as npt

from pipeline.core.envelope import EnvelopeError as SnapshotError

if TYPE_CHECKING:
    from pipeline.core.source_wire import SourceSnapshot
    from pipeline.core.wire import ShardProgress, SketchSnapshot

    AnySnapshot: TypeAlias = SketchSnapshot | SourceSnapshot
    """A partition shard's snapshot or an edge shard's: the contents checks read the same fields."""

__all__ = [
    "KllLayout",
    "SnapshotLimits",
    "check_progress",
    "check_sketches_message",
    "check_snapshot",
    "check_snapshot_contents",
    "kll_capacity",
    "kll_layout",
    "max_numbers_per_record",
]

logger = logging.getLogger(__name__)

# The DataSketches KLL serialization (kll_sketch<double>::serialize):
#   byte 0 preamble ints (2 short, 5 full), 1 serial version (1; 2 = one item),
#   2 family (15 = KLL), 3 flags, 4-5 k, 6 m, 7 unused;
#   full form only: 8-15 n, 16-17 min k, 18 number of levels, 19 unused,
#   then the level offsets (u32 each, the last level's end omitted), min, max, items.
_SHORT = struct.Struct("<BBBBHBx")
_FULL = struct.Struct("<BBBBHBxQHBx")
_KLL_FAMILY = 15
_PREAMBLE_SHORT, _PREAMBLE_FULL = 2, 5
_SERIAL_FULL, _SERIAL_SINGLE = 1, 2
_FLAG_EMPTY, _FLAG_LEVEL_ZERO_SORTED, _FLAG_SINGLE = 1, 2, 4
_ITEM = 8  # a double
_MAX_LEVELS = 61  # 2**61 * k already exceeds any count an int64 offset could reach


@dataclass(frozen=True)
class SnapshotLimits:
    """What the aggregator knows to check snapshots against."""

    shards: int
    """Shard ids are ``0 .. shards - 1``: the input topic's partition count (it can grow)."""
    max_value_bytes: int = 8 * 1024 * 1024
    """The codec's largest value: bounds how many numbers one source record can carry."""
    accept_infinity: bool = False
    """Whether the shards accept +-inf (then a sketch may hold them)."""


@dataclass(frozen=True)
class KllLayout:
    """The parts of a serialized KLL doubles sketch that the checks read."""

    n: int
    """The count the sketch states."""
    k: int
    """Its accuracy parameter."""
    levels: tuple[int, ...]
    """Offsets of the levels in ``items``, with the end of the last level appended (so len = levels + 1)."""
    items: npt.NDArray[np.float64]
    """The retained items, level 0 first."""
    min: float
    """The stated minimum (NaN when empty)."""
    max: float
    """The stated maximum (NaN when empty)."""
    level_zero_sorted: bool
    """Whether level 0 is flagged sorted (levels above it always must be)."""

    @property
    def weight(self) -> int:
        """The total weight of the items: an item at level h stands for 2**h numbers."""
        return sum((end - start) << h for h, (start, end) in enumerate(itertools.pairwise(self.levels)))


def max_numbers_per_record(max_value_bytes: int) -> int:
    """The most numbers one accepted source record can carry.

    A JSON array is the densest format: ``n`` numbers need at least ``2n + 1``
    bytes (``[1,1,...,1]``); a float64 block needs ``8n + 4``.
    """
    return max((max_value_bytes - 1) // 2, 1)


def kll_capacity(k: int, m: int, num_levels: int) -> int:
    """Items a KLL sketch of ``k``, ``m`` and ``num_levels`` levels has room for (DataSketches'
    ``kll_helper::compute_total_capacity``): level h holds max(m, round(k * (2/3)**depth)),
    depth = num_levels - h - 1, in DataSketches' integer arithmetic."""

    def shrink(width: int, depth: int) -> int:
        # int_cap_aux_aux: round(width * 2**depth / 3**depth), computed as DataSketches does.
        return int((((2 * width) << depth) // 3**depth + 1) >> 1)

    def level(depth: int) -> int:
        # int_cap_aux: depths over 30 in two steps, as DataSketches does.
        width = shrink(k, depth) if depth <= 30 else shrink(shrink(k, depth // 2), depth - depth // 2)
        return max(m, width)

    return sum(level(num_levels - h - 1) for h in range(num_levels))


def kll_layout(data: bytes) -> KllLayout:
    """Read a serialized KLL doubles sketch; :class:`SnapshotError` ``bad_sketch`` if it is not one."""
    if len(data) < _SHORT.size:
        raise SnapshotError("bad_sketch", f"{len(data)} bytes is too short for a KLL sketch")
    preamble, serial, family, flags, k, _m = _SHORT.unpack_from(data)
    if family != _KLL_FAMILY:
        raise SnapshotError("bad_sketch", f"sketch family {family} is not KLL ({_KLL_FAMILY})")
    if preamble == _PREAMBLE_SHORT and flags & _FLAG_EMPTY and len(data) == _SHORT.size:
        nan = math.nan
        return KllLayout(0, k, (0, 0), np.empty(0), nan, nan, True)
    if preamble == _PREAMBLE_SHORT and serial == _SERIAL_SINGLE and flags & _FLAG_SINGLE:
        if len(data) != _SHORT.size + _ITEM:
            raise SnapshotError("bad_sketch", f"a one-item sketch of {len(data)} bytes, not {_SHORT.size + _ITEM}")
        item = np.frombuffer(data, "<f8", 1, _SHORT.size).astype(np.float64)
        return KllLayout(1, k, (0, 1), item, float(item[0]), float(item[0]), True)
    if preamble != _PREAMBLE_FULL or serial != _SERIAL_FULL or len(data) < _FULL.size:
        raise SnapshotError("bad_sketch", f"unknown KLL layout: preamble {preamble}, serial version {serial}")
    _, _, _, _, _, _, n, _min_k, num_levels = _FULL.unpack_from(data)
    if not 1 <= num_levels <= _MAX_LEVELS:
        raise SnapshotError("bad_sketch", f"{num_levels} levels")
    levels_end = _FULL.size + 4 * num_levels
    items_start = levels_end + 2 * _ITEM
    retained, ragged = divmod(len(data) - items_start, _ITEM)
    if retained < 0 or ragged:
        raise SnapshotError("bad_sketch", f"{len(data)} bytes do not hold {num_levels} levels and whole items")
    offsets = struct.unpack_from(f"<{num_levels}I", data, _FULL.size)
    # Offsets are into the sketch's full capacity; the items start at the first. The
    # C++ deserializer reads capacity - offsets[0] items whatever the buffer's length
    # (a truncated buffer crashed a test process), so the length must be exactly that.
    first = offsets[0]
    capacity = kll_capacity(k, _m, num_levels)
    if first > capacity or retained != capacity - first:
        raise SnapshotError(
            "bad_sketch",
            f"{retained} items where k={k}, m={_m} and {num_levels} levels from {first} make {capacity - first}",
        )
    levels = (*[offset - first for offset in offsets], retained)
    if sorted(levels) != list(levels):
        raise SnapshotError("bad_sketch", f"level offsets {offsets} (and {retained} items) are not in order")
    low, high = struct.unpack_from("<2d", data, levels_end)
    # A read-only view of the message's bytes (little-endian doubles): no copy.
    items = np.frombuffer(data, "<f8", retained, items_start)
    return KllLayout(n, k, levels, items, low, high, bool(flags & _FLAG_LEVEL_ZERO_SORTED))


def check_snapshot_contents(snapshot: AnySnapshot, sketch: datasketches.kll_doubles_sketch | None = None) -> None:
    """The checks that need no context: whether the snapshot agrees with itself.

    :meth:`SketchSnapshot.from_bytes <pipeline.core.wire.SketchSnapshot.from_bytes>`
    runs them, so every reader of ``sketches`` (the aggregator, its rebuild, the
    tools) refuses such a forgery; ``sketch`` is the payload it already deserialized.
    """
    _contents(snapshot, sketch)


def check_snapshot(snapshot: SketchSnapshot, limits: SnapshotLimits) -> None:
    """Refuse a snapshot whose claims cannot be true here; :class:`SnapshotError` names why.

    The contents (again: a snapshot built in code has not been through ``from_bytes``),
    then the context: shard id, count per record, infinities.
    """
    _contents(snapshot, None)
    _check_context(snapshot, limits)


def check_progress(progress: ShardProgress, limits: SnapshotLimits) -> None:
    """Refuse a heartbeat of a shard that does not exist or that claims more than it could ingest."""
    _check_shard(progress.shard, limits)
    _check_count("ingested", progress.ingested, progress.last_offset, limits)


def check_sketches_message(message: SketchSnapshot | ShardProgress, limits: SnapshotLimits) -> None:
    """The context checks of a message read with ``parse_sketches_value`` (``sketches_contract.accept`` runs them).

    Its contents were checked when it was parsed, so only what needs the context
    runs here (about 2 us, against some 50 us for the contents).
    """
    # Imported here: wire.py imports this module (from_bytes runs the contents checks).
    from pipeline.core.wire import ShardProgress  # noqa: PLC0415

    if isinstance(message, ShardProgress):
        check_progress(message, limits)
    else:
        _check_context(message, limits)


def _check_context(snapshot: SketchSnapshot, limits: SnapshotLimits) -> None:
    _check_shard(snapshot.shard, limits)
    _check_count("n", snapshot.n, snapshot.last_offset, limits)
    # With the contents checked, a header min or max is null (NaN) exactly where the sketch's is
    # infinite, and the items lie within them: finite bounds mean finite items.
    unbounded = snapshot.n > 0 and not (math.isfinite(snapshot.min) and math.isfinite(snapshot.max))
    if unbounded and not limits.accept_infinity:
        raise SnapshotError("non_finite", "the sketch holds an infinity, and accept_infinity is off")


def _check_shard(shard: int, limits: SnapshotLimits) -> None:
    if not 0 <= shard < limits.shards:
        raise SnapshotError("unknown_shard", f"shard {shard} does not exist: the input topic has {limits.shards}")


def _check_count(name: str, count: int, last_offset: int, limits: SnapshotLimits) -> None:
    # Records 0 .. last_offset of one partition: at most last_offset + 1 of them.
    most = (last_offset + 1) * max_numbers_per_record(limits.max_value_bytes)
    if count > most:
        raise SnapshotError(
            "implausible_count",
            f"{name}={count} numbers cannot come from {last_offset + 1} records of at most "
            f"{limits.max_value_bytes} bytes (at most {most})",
        )


def _contents(snapshot: AnySnapshot, sketch: datasketches.kll_doubles_sketch | None) -> KllLayout:
    if snapshot.n > 0 and snapshot.last_offset < 0:
        raise SnapshotError("implausible_count", f"n={snapshot.n} numbers before any record (last_offset -1)")
    if snapshot.rejected < 0:
        raise SnapshotError("implausible_count", f"negative rejected count {snapshot.rejected}")
    if not 0.0 <= snapshot.rank_error <= 1.0:
        raise SnapshotError("bad_header", f"rank_error {snapshot.rank_error} is not in [0, 1]")
    layout = kll_layout(snapshot.sketch_bytes)
    if layout.n != snapshot.n or layout.weight != layout.n:
        raise SnapshotError(
            "inconsistent",
            f"the sketch's {layout.items.size} items weigh {layout.weight}, its n says {layout.n}, "
            f"the header n={snapshot.n}",
        )
    _check_items(layout)
    _check_header_statistics(snapshot, layout, sketch)
    return layout


def _check_items(layout: KllLayout) -> None:
    items = layout.items
    if not items.size:
        return
    low, high = float(items.min()), float(items.max())  # NaN if any item is NaN
    if math.isnan(low) or math.isnan(layout.min) or math.isnan(layout.max):
        raise SnapshotError("non_finite", "the sketch holds NaN")
    if low < layout.min or high > layout.max:
        raise SnapshotError("inconsistent", f"items in [{low}, {high}] outside the stated [{layout.min}, {layout.max}]")
    # Above level 0 every level is sorted (compaction writes it so); level 0 only when flagged.
    # One pass over all items (a loop per level cost ~50 us a snapshot): an item smaller than
    # its predecessor is allowed only where a level starts, or inside an unsorted level 0.
    # The descents are few (one per level start at most, in a genuine sketch): set
    # arithmetic on them beats further numpy calls, whose overhead dominates here.
    descents = set((np.flatnonzero(items[1:] < items[:-1]) + 1).tolist())
    descents.difference_update(layout.levels[1:])
    if not layout.level_zero_sorted:
        descents = {d for d in descents if d >= layout.levels[1]}
    if descents:
        position = min(descents)
        level = next(h for h in range(len(layout.levels) - 1) if position < layout.levels[h + 1])
        raise SnapshotError("bad_sketch", f"level {level} of the sketch is not sorted")


def _check_header_statistics(
    snapshot: AnySnapshot, layout: KllLayout, sketch: datasketches.kll_doubles_sketch | None
) -> None:
    if sketch is None:
        try:
            sketch = datasketches.kll_doubles_sketch.deserialize(snapshot.sketch_bytes)
        # Untrusted bytes: whatever the C++ deserializer raises is a bad sketch (as in wire.py).
        except Exception as exc:
            raise SnapshotError("bad_sketch", f"sketch does not deserialize: {exc}") from None
    # The C++ deserializer must agree with this reading of the bytes (a cross-check of the parser).
    if int(sketch.num_retained) != layout.items.size:
        raise SnapshotError("bad_sketch", f"{sketch.num_retained} retained items, {layout.items.size} read")
    if layout.n == 0:
        if not all(math.isnan(x) for x in (snapshot.min, snapshot.max, snapshot.median.value)):
            raise SnapshotError("inconsistent", "an empty sketch with a min, max or median")
        return
    if not (_same(snapshot.min, layout.min) and _same(snapshot.max, layout.max)):
        raise SnapshotError(
            "inconsistent",
            f"header min/max {snapshot.min}/{snapshot.max}, the sketch's {layout.min}/{layout.max}",
        )
    median = snapshot.median.value
    unbounded = not (math.isfinite(layout.min) and math.isfinite(layout.max))
    if not (layout.min <= median <= layout.max or (math.isnan(median) and unbounded)):
        raise SnapshotError("inconsistent", f"header median {median} outside [min, max]")


def _same(header: float, actual: float) -> bool:
    # JSON has no infinity: a shard that accepts infinities writes null (read as NaN) for one.
    return header == actual or (math.isnan(header) and not math.isfinite(actual))
