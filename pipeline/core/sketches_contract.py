"""The contract of the ``sketches`` topic: its keys, the order of a shard's snapshots, what is accepted.

``sketches`` is compacted and keyed, so its keys decide what survives compaction:

* a shard's snapshot is keyed by the shard id in decimal ASCII (``b"17"``);
* its progress messages (heartbeats) by ``b"17.progress"``, so that compaction never
  replaces a snapshot by a heartbeat;
* a tombstone (no value) under a snapshot key retires the shard: its numbers leave
  the estimate. One under a progress key only drops the shard's heartbeat;
* edge shards (sources that sketch their own numbers) write under ``edge/<name>``
  and ``edge/<name>.progress``: their keys, names, order and limits belong to
  :mod:`pipeline.core.source_contract`, which :func:`accept` hands those keys to.

The byte layout and versions of the values belong to :mod:`pipeline.core.wire`;
this module owns the keys, which of two snapshots of a shard is the newer
(:func:`newer_than`), and the one acceptance check every reader of ``sketches``
runs (:func:`accept`): the aggregator agent, its rebuild from the compacted topic,
``dmedian replay --sketches`` and ``dmedian verify``. A reader that skipped part of
it would let a forgery the agent refuses back in on the next takeover. Pure: no
Kafka, no Faust.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.core.snapshot_checks import SnapshotLimits, check_progress, check_sketches_message
from pipeline.core.source_contract import SourcePolicy, SourceTombstone, accept_source, is_source_key
from pipeline.core.source_wire import SourceProgress, SourceSnapshot
from pipeline.core.wire import ShardProgress, SketchSnapshot, SnapshotError, parse_sketches_value

__all__ = [
    "PROGRESS_KEY_SUFFIX",
    "Accepted",
    "SnapshotLimits",
    "SourcePolicy",
    "Tombstone",
    "accept",
    "newer_than",
    "parse_key",
    "progress_key",
    "shard_key",
]

logger = logging.getLogger(__name__)

PROGRESS_KEY_SUFFIX = b".progress"
"""What a progress message's key adds to its shard's key."""

_MAX_KEY_DIGITS = 19  # an int64: a longer key names no partition of any Kafka topic


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A record without a value on ``sketches``."""

    shard: int
    """The shard its key names."""
    progress: bool
    """True under a progress key (drops the heartbeat only); False retires the shard."""


Accepted = SketchSnapshot | ShardProgress | Tombstone | SourceSnapshot | SourceProgress | SourceTombstone
"""What :func:`accept` hands back: a snapshot, a heartbeat or a tombstone of a partition shard or an
edge shard, all checked (an edge shard's history is :class:`~pipeline.core.source_contract.SourceBook`'s)."""

_DEFAULT_SOURCES = SourcePolicy()


def shard_key(shard: int) -> bytes:
    """The key of a shard: its snapshots on ``sketches``, and its state in the shard table."""
    return str(shard).encode("ascii")


def progress_key(shard: int) -> bytes:
    """The ``sketches`` key of a shard's progress messages (distinct from its snapshot's key)."""
    return shard_key(shard) + PROGRESS_KEY_SUFFIX


def parse_key(key: bytes | None) -> tuple[int, bool]:
    """The shard a ``sketches`` key names, and whether it is a progress key.

    Only the keys :func:`shard_key` and :func:`progress_key` write are read:
    canonical decimal (no sign, no leading zero, no spaces), so that one shard has
    exactly one snapshot key and compaction keeps one snapshot of it.
    """
    if key is None:
        raise SnapshotError("bad_key", "a record without a key (sketches is keyed by shard)")
    progress = key.endswith(PROGRESS_KEY_SUFFIX)
    digits = key[: -len(PROGRESS_KEY_SUFFIX)] if progress else key
    if not (digits.isdigit() and len(digits) <= _MAX_KEY_DIGITS) or (digits[:1] == b"0" and digits != b"0"):
        raise SnapshotError("bad_key", f"key {key[:40]!r} names no shard")
    return int(digits), progress


def newer_than(candidate: SketchSnapshot, held: SketchSnapshot | None) -> bool:
    """Whether ``candidate`` is a newer state of its shard than ``held`` (None: nothing held).

    Snapshots of one shard can arrive out of order after a rebalance (the old
    owner's last snapshot may land after the new owner's first). A shard's offset
    only grows, so the higher ``last_offset`` is the newer state, and at equal
    offsets the higher ``n``. An equal state is not newer: re-merging the same
    sketch would only publish a record that differs by the merge's randomness.
    """
    return held is None or (candidate.last_offset, candidate.n) > (held.last_offset, held.n)


def accept(
    key: bytes | None, value: bytes | None, limits: SnapshotLimits, sources: SourcePolicy = _DEFAULT_SOURCES
) -> Accepted:
    """Read one ``sketches`` record, or raise :class:`~pipeline.core.wire.SnapshotError` naming why not.

    The value must parse (wire format, contents checks), its key must be the one
    its shard and kind are written under (``key_mismatch``: a genuine snapshot
    replayed under another shard's key would replace that shard's numbers), and its
    claims must be possible here (shard id, counts, infinities: ``limits``).
    A tombstone's key must name a shard that exists. A key in the edge shards'
    namespace goes to :func:`~pipeline.core.source_contract.accept_source` with ``sources``.
    """
    if is_source_key(key):
        assert key is not None
        return accept_source(key, value, sources)
    if value is None:
        shard, progress = parse_key(key)
        if not 0 <= shard < limits.shards:
            raise SnapshotError("unknown_shard", f"tombstone of shard {shard}: the input topic has {limits.shards}")
        return Tombstone(shard, progress)
    message = parse_sketches_value(value)
    if isinstance(message, ShardProgress):
        if key != progress_key(message.shard):
            raise SnapshotError("key_mismatch", f"key {key!r:.40} does not name the progress of shard {message.shard}")
        check_progress(message, limits)
        return message
    if key != shard_key(message.shard):
        raise SnapshotError("key_mismatch", f"key {key!r:.40} does not name shard {message.shard}")
    check_sketches_message(message, limits)
    return message
