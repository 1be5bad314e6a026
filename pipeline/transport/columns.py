"""A fetched partition batch as columns: what a batch event is built from, whatever fetched it.

Both fetchers (aiokafka, librdkafka) turn one partition's share of a fetch into a
:class:`Columns`; the batch consumer keeps, trims and joins them by offset without
building a record object per record.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

__all__ = ["Columns", "Fetched", "columns_of"]

_OFFSET, _KEY, _VALUE = attrgetter("offset"), attrgetter("key"), attrgetter("value")


@dataclass(frozen=True, slots=True)
class Columns:
    """One partition's fetched records, in offset order, column by column."""

    offsets: list[int]
    """Source offset of each record (strictly increasing)."""
    keys: list[bytes | None]
    """Undecoded key of each record."""
    values: list[bytes | None]
    """Undecoded value of each record."""
    timestamp_ms: int
    """The last record's timestamp, ms since the epoch."""
    timestamp_type: int
    """The last record's timestamp type (Kafka's: 0 create time, 1 log append time)."""

    def __len__(self) -> int:
        return len(self.offsets)

    def from_offset(self, first: int) -> Columns | None:
        """The records at ``first`` and after (None if none): what an earlier read left to do."""
        offsets = self.offsets
        if not offsets or offsets[0] >= first:
            return self if offsets else None
        cut = bisect_left(offsets, first)
        if cut == len(offsets):
            return None
        return Columns(offsets[cut:], self.keys[cut:], self.values[cut:], self.timestamp_ms, self.timestamp_type)

    def then(self, later: Columns) -> Columns:
        """These records followed by ``later``'s (fetched after them)."""
        return Columns(
            self.offsets + later.offsets,
            self.keys + later.keys,
            self.values + later.values,
            later.timestamp_ms,
            later.timestamp_type,
        )


@dataclass(frozen=True, slots=True)
class Fetched:
    """One partition's records of a fetch, standing in for them in Faust's record map."""

    columns: Columns
    start: int  # first offset this batch stands for (its span's start)
    moves: int  # how often its partition had been repositioned when it was fetched


def columns_of(records: list[Any]) -> Columns | None:
    """aiokafka's fetched records of one partition as columns (None if there are none)."""
    # ConsumerRecord or raw C records (aiokafka ships no type information).
    if not records:
        return None
    last = records[-1]
    # map/attrgetter: the per-record cost here bounds the rate (~0.35 us vs 0.5 us a record).
    return Columns(
        list(map(_OFFSET, records)),
        list(map(_KEY, records)),
        list(map(_VALUE, records)),
        last.timestamp,  # aiokafka: ms since the epoch, always set
        last.timestamp_type,
    )
