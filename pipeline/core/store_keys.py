"""The key layout of the one-database state store (``pipeline/app/store.py``).

Every partition of a table lives in one RocksDB database, under a prefix: the
partition number as 4 big-endian bytes, so one partition's keys are one
contiguous, sorted range (RocksDB orders keys bytewise), and dropping a
partition is one range delete. After the prefix, one tag byte separates the
partition's bookkeeping from the table's keys:

    <partition:4 bytes BE> 0x00                 changelog offset persisted for the partition
    <partition:4 bytes BE> 0x01 <table key>     a table entry

so no table key can collide with the offset, and the offset falls inside the
partition's range (a range delete drops keys and offset together, atomically).
"""

from __future__ import annotations

import logging
import struct

__all__ = [
    "MAX_PARTITION",
    "data_key",
    "decode_offset",
    "encode_offset",
    "offset_key",
    "partition_range",
    "split_key",
]

logger = logging.getLogger(__name__)

_PARTITION = struct.Struct(">I")
_OFFSET = struct.Struct(">q")
_PREFIX_LEN = _PARTITION.size
_OFFSET_TAG = b"\x00"
_DATA_TAG = b"\x01"

MAX_PARTITION = 2**32 - 1
"""The largest partition number the 4-byte prefix can hold."""


def _prefix(partition: int) -> bytes:
    if not 0 <= partition <= MAX_PARTITION:
        raise ValueError(f"partition {partition} is outside [0, {MAX_PARTITION}]")
    return _PARTITION.pack(partition)


def data_key(partition: int, key: bytes) -> bytes:
    """The database key of table key ``key`` in ``partition``."""
    return _prefix(partition) + _DATA_TAG + key


def offset_key(partition: int) -> bytes:
    """The database key of ``partition``'s persisted changelog offset."""
    return _prefix(partition) + _OFFSET_TAG


def partition_range(partition: int) -> tuple[bytes, bytes]:
    """``[start, end)``: every database key of ``partition``, its offset included."""
    start = _prefix(partition)
    # The next partition's prefix; past the last partition, any key longer than the
    # prefix with a 0xff first byte is already greater than all of ours.
    end = _prefix(partition + 1) if partition < MAX_PARTITION else b"\xff" * (_PREFIX_LEN + 1)
    return start, end


def split_key(raw: bytes) -> tuple[int, bytes | None]:
    """``(partition, table key)`` of a database key; the table key is None for the offset entry.

    Raises ValueError for a key this layout never writes.
    """
    if len(raw) <= _PREFIX_LEN:
        raise ValueError(f"database key {raw!r} is shorter than a partition prefix and its tag")
    (partition,) = _PARTITION.unpack_from(raw)
    tag = raw[_PREFIX_LEN : _PREFIX_LEN + 1]
    if tag == _OFFSET_TAG and len(raw) == _PREFIX_LEN + 1:
        return partition, None
    if tag == _DATA_TAG:
        return partition, raw[_PREFIX_LEN + 1 :]
    raise ValueError(f"database key {raw!r} has an unknown tag {tag!r}")


def encode_offset(offset: int) -> bytes:
    """A changelog offset as stored."""
    return _OFFSET.pack(offset)


def decode_offset(raw: bytes) -> int:
    """A stored changelog offset."""
    (offset,) = _OFFSET.unpack(raw)
    return int(offset)
