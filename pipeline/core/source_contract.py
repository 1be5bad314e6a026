"""The edge shards' part of the ``sketches`` contract: their keys, names, order and limits.

Edge shards write to ``sketches`` beside the partition shards, under keys that
cannot collide with them: a partition shard's key is its id in decimal digits,
an edge shard's starts with ``edge/``:

* ``edge/<name>``: the source's snapshots (compaction keeps its latest);
* ``edge/<name>.progress``: its heartbeats;
* a tombstone under ``edge/<name>`` retires the source: its numbers leave the estimate.

A name is a source id, ``[A-Za-z0-9_-]`` (1 to 64 characters), optionally
followed by ``@`` and a run token (``[0-9a-z]``, 1 to 16 characters) that a
source without a state file adds, so that each of its runs is an edge shard of
its own (see :mod:`pipeline.source`). No name contains a dot, so a name never
ends in ``.progress``. Operators narrow the ids further with ``source_id_pattern``.

:class:`SourceBook` is the aggregator's ledger of edge shards: it decides, for
every message an edge shard sends, whether it is a newer state (take it), the
same state again (ignore it: sequence numbers make replays idempotent), or a
message to refuse, with a reason: a sequence number going back, a source over
the cap or over its rate, a sketch too large or too coarse, a clock too far
ahead, an id outside the pattern. A refused message changes nothing. Pure: no
Kafka, no Faust.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass

from pipeline.core.source_wire import SourceProgress, SourceSnapshot, parse_source_value
from pipeline.core.wire import SnapshotError

__all__ = [
    "SOURCE_KEY_PREFIX",
    "SourceBook",
    "SourceNote",
    "SourcePolicy",
    "SourceTombstone",
    "accept_source",
    "check_source_name",
    "is_source_key",
    "source_key",
    "source_progress_key",
]

logger = logging.getLogger(__name__)

SOURCE_KEY_PREFIX = b"edge/"
"""What every edge shard's key starts with (a partition shard's key is digits only)."""

_PROGRESS_SUFFIX = b".progress"
_NAME = re.compile(r"(?P<id>[A-Za-z0-9_-]{1,64})(?:@(?P<run>[0-9a-z]{1,16}))?")


@dataclass(frozen=True)
class SourcePolicy:
    """What the aggregator accepts of edge shards (settings ``source_*``, ``max_sources``)."""

    id_pattern: str = r"[A-Za-z0-9_-]{1,64}"
    """A regular expression a source id must match as a whole (the run token is not matched)."""
    max_sources: int = 10_000
    """Edge shards held at most; a new one past this is refused (``over_source_cap``)."""
    messages_per_s: float = 5.0
    """A source's sustained rate of messages (snapshots and heartbeats), by their send times."""
    burst: int = 20
    """Messages a source may send at once after a quiet spell (the bucket's depth)."""
    min_k: int = 200
    """The smallest KLL k accepted: a coarser sketch would widen every record's bound."""
    max_sketch_bytes: int = 64 * 1024
    """The largest serialized sketch accepted (k = 200 serializes to about 5 KB at any count)."""
    max_clock_ahead_ms: int = 300_000
    """How far a message's send time may be ahead of the aggregator's clock (the rate is counted by it)."""
    accept_infinity: bool = False
    """Whether a sketch may hold +-inf (as the shards' ``accept_infinity``)."""

    def __post_init__(self) -> None:
        try:
            re.compile(self.id_pattern)
        except re.error as exc:
            raise ValueError(f"source_id_pattern {self.id_pattern!r} is not a regular expression: {exc}") from None
        if self.messages_per_s <= 0 or self.burst < 1 or self.max_sources < 1:
            raise ValueError("messages_per_s must be > 0; burst and max_sources at least 1")


@dataclass(frozen=True, slots=True)
class SourceTombstone:
    """A record without a value under an edge shard's key."""

    source: str
    """The edge shard its key names."""
    progress: bool
    """True under a progress key (drops the heartbeat only); False retires the source."""


def source_key(name: str) -> bytes:
    """The ``sketches`` key of an edge shard's snapshots."""
    return SOURCE_KEY_PREFIX + name.encode("ascii")


def source_progress_key(name: str) -> bytes:
    """The ``sketches`` key of an edge shard's heartbeats."""
    return source_key(name) + _PROGRESS_SUFFIX


def is_source_key(key: bytes | None) -> bool:
    """Whether ``key`` is in the edge shards' namespace."""
    return key is not None and key.startswith(SOURCE_KEY_PREFIX)


def check_source_name(name: str, id_pattern: str = SourcePolicy.id_pattern) -> str:
    """Return ``name`` if it is a well-formed edge shard name whose id matches ``id_pattern``.

    Raises :class:`SnapshotError` ``bad_source_id`` otherwise, naming the rule.
    """
    match = _NAME.fullmatch(name)
    if match is None:
        raise SnapshotError(
            "bad_source_id", f"{name!r:.80} is not a source id ([A-Za-z0-9_-], 1 to 64 characters, optional @run)"
        )
    if re.fullmatch(id_pattern, match["id"]) is None:
        raise SnapshotError(
            "bad_source_id", f"source id {match['id']!r} does not match source_id_pattern {id_pattern!r}"
        )
    return name


def _parse_key(key: bytes, policy: SourcePolicy) -> tuple[str, bool]:
    body = key[len(SOURCE_KEY_PREFIX) :]
    progress = body.endswith(_PROGRESS_SUFFIX)
    if progress:
        body = body[: -len(_PROGRESS_SUFFIX)]
    try:
        name = body.decode("ascii")
    except UnicodeDecodeError:
        raise SnapshotError("bad_source_id", f"key {key[:80]!r} is not ASCII") from None
    return check_source_name(name, policy.id_pattern), progress


def accept_source(
    key: bytes, value: bytes | None, policy: SourcePolicy
) -> SourceSnapshot | SourceProgress | SourceTombstone:
    """Read one record under an edge shard's key, or raise :class:`SnapshotError` naming why not.

    The checks that need no history: the key's name, the message against itself,
    the key against the message (``key_mismatch``), and the policy's size, k and
    infinity limits. Its history (sequence numbers, cap, rate, clock) is
    :meth:`SourceBook.admit`'s.
    """
    name, progress = _parse_key(key, policy)
    if value is None:
        return SourceTombstone(name, progress)
    message = parse_source_value(value)
    if message.source != name or isinstance(message, SourceProgress) != progress:
        kind = "heartbeat" if isinstance(message, SourceProgress) else "snapshot"
        raise SnapshotError(
            "key_mismatch", f"key {key!r:.80} does not name the {kind} of source {message.source!r:.80}"
        )
    if isinstance(message, SourceSnapshot):
        if len(message.sketch_bytes) > policy.max_sketch_bytes:
            raise SnapshotError(
                "oversized",
                f"a sketch of {len(message.sketch_bytes)} B; max_source_sketch_bytes is {policy.max_sketch_bytes}",
            )
        if message.k < policy.min_k:
            raise SnapshotError(
                "k_too_small", f"k={message.k}: the records' bound needs k >= {policy.min_k} (sketch_k)"
            )
        unbounded = message.n > 0 and not (math.isfinite(message.min) and math.isfinite(message.max))
        if unbounded and not policy.accept_infinity:
            raise SnapshotError("non_finite", "the sketch holds an infinity, and accept_infinity is off")
    return message


@dataclass
class SourceNote:
    """What the book holds of one edge shard."""

    seq: int = 0
    """Sequence number of the snapshot held (0: none, only heartbeats)."""
    n: int = 0
    """Numbers in it."""
    ingested: int = 0
    """Numbers the source said it had added, in its latest message."""
    ts: int = 0
    """Send time of its latest message (the rate is counted by these)."""
    tokens: float = 0.0
    """Messages it may send now without waiting."""
    heard_ms: int = 0
    """When the aggregator last took a message of it (its own clock): staleness is counted from this."""


class SourceBook:
    """The aggregator's ledger of edge shards: which message is newer, and what is refused."""

    def __init__(self, policy: SourcePolicy) -> None:
        self.policy = policy
        """The limits applied."""
        self._seen: dict[str, SourceNote] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, name: object) -> bool:
        return name in self._seen

    def seq(self, name: str) -> int:
        """The sequence number held for ``name`` (0: none)."""
        seen = self._seen.get(name)
        return 0 if seen is None else seen.seq

    def admit(self, message: SourceSnapshot | SourceProgress, now_ms: int, heard_ms: int | None = None) -> bool:
        """Whether ``message`` is a newer state to take (False: the state held, sent again).

        ``heard_ms`` is when the source was heard from (default ``now_ms``; a rebuild
        from ``sketches`` passes the message's send time, at most now).

        Raises :class:`SnapshotError` for a message to refuse; then nothing changes.
        A snapshot's sequence number must be higher than the one held; an equal one
        with the same count is the same snapshot again (a producer retry, or a
        source re-sending after a restart), an equal one with another count is
        refused (``seq_reused``), a lower one too (``seq_regressed``). A heartbeat
        may not name a snapshot older than the one held.
        """
        policy = self.policy
        seen = self._seen.get(message.source)
        if message.ts > now_ms + policy.max_clock_ahead_ms:
            raise SnapshotError(
                "clock_ahead", f"sent at {message.ts}, {message.ts - now_ms} ms ahead of this aggregator's clock"
            )
        if seen is None and len(self._seen) >= policy.max_sources:
            raise SnapshotError(
                "over_source_cap", f"{len(self._seen)} edge shards are held; max_sources is {policy.max_sources}"
            )
        held_seq = 0 if seen is None else seen.seq
        if isinstance(message, SourceSnapshot) and message.seq == held_seq and seen is not None:
            if message.n != seen.n:
                detail = f"snapshot {message.seq} again, with n={message.n} (held n={seen.n})"
                raise SnapshotError("seq_reused", detail)
            return False
        if message.seq < held_seq:
            raise SnapshotError("seq_regressed", f"sequence number {message.seq} after {held_seq}")
        tokens = float(policy.burst)
        if seen is not None:
            # Refilled by the time between the two sends (the source's clock, held to at most
            # max_clock_ahead_ms ahead of ours: a forged clock buys at most that much).
            elapsed_s = max(message.ts - seen.ts, 0) / 1000.0
            tokens = min(seen.tokens + elapsed_s * policy.messages_per_s, float(policy.burst))
        if tokens < 1.0:
            raise SnapshotError(
                "over_rate",
                f"more than {policy.messages_per_s:g} messages/s (burst {policy.burst}) from {message.source!r}",
            )
        seen = self._seen.setdefault(message.source, SourceNote())
        seen.tokens, seen.ts = tokens - 1.0, max(message.ts, seen.ts)
        seen.heard_ms = max(seen.heard_ms, now_ms if heard_ms is None else heard_ms)
        if isinstance(message, SourceSnapshot):
            seen.seq, seen.n = message.seq, message.n
            seen.ingested = max(seen.ingested, message.n)
        else:
            seen.ingested = max(message.ingested, seen.n)
        return True

    def notes(self) -> dict[str, SourceNote]:
        """A copy of what the book holds of every edge shard, by name."""
        return {name: dataclasses.replace(seen) for name, seen in self._seen.items()}

    def retire(self, name: str) -> bool:
        """Forget an edge shard (its tombstone); return whether it was held."""
        return self._seen.pop(name, None) is not None

    def pending(self) -> int:
        """Numbers the edge shards said they added that their snapshots held do not reflect."""
        return sum(seen.ingested - seen.n for seen in self._seen.values())

    def stale(self, now_ms: int, max_age_ms: int) -> list[str]:
        """Edge shards not heard from for longer than ``max_age_ms``, by name (they stay in the estimate)."""
        cutoff = now_ms - max_age_ms
        return sorted(name for name, seen in self._seen.items() if seen.heard_ms < cutoff)

    def heard_ms(self, name: str) -> int | None:
        """When the aggregator last took a message of ``name`` (None: not held)."""
        seen = self._seen.get(name)
        return None if seen is None else seen.heard_ms
