"""An edge shard's own state: its sketch, its sequence number and its emission rule.

This is the pure core of :class:`pipeline.source.SketchingSource`: it adds
numbers, decides (with the same emission rule as a partition shard) when to
send a snapshot or a heartbeat, numbers the snapshots, and serializes itself for
the source's state file. It is not thread-safe: the source holds a lock around
every call. No Kafka, no Faust.

What makes a restart safe is the order of two writes. Before a snapshot with
sequence number s is handed to the producer, the state file holds the sketch it
carries under s (:meth:`SourceState.next_message` returns it, the caller
persists, then sends). So the file's sequence number is never behind what was
sent, and a restarted source:

* whose sketch is exactly snapshot s's sends it again as s: the aggregator takes
  it if s never arrived, and ignores it as a duplicate otherwise;
* whose sketch grew after s (a periodic save, or numbers added since the
  restart) sends it as s + 1, a number the crashed process never used.

Nothing is counted twice (a snapshot replaces its source's previous one, never
adds to it), and what was added after the last save is lost on a crash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import datasketches
import numpy as np
import numpy.typing as npt

from pipeline.core.budget import GlobalView
from pipeline.core.emission import EmissionState, RuleName, ShardEmissionRule, build_shard_rule
from pipeline.core.envelope import EnvelopeError, pack_envelope, unpack_envelope
from pipeline.core.source_wire import SourceProgress, SourceSnapshot

__all__ = ["RateBucket", "SourceOptions", "SourceState"]

logger = logging.getLogger(__name__)

_STATE_MAGIC = b"DMSS"
_STATE_VERSION = 1
_BUFFER = 512  # single numbers collected before one vectorised update


@dataclass(frozen=True)
class SourceOptions:
    """How a source sketches and when it sends (the defaults follow the pipeline's settings)."""

    k: int = 200
    """The KLL accuracy parameter (the aggregator refuses one below its ``sketch_k``)."""
    rule: RuleName = "budget"
    """The emission rule, as a shard's (``emission_rule``)."""
    theta: float = 0.005
    """The error budget (``error_budget``)."""
    growth: float = 4.0
    """Count ratio that sends a snapshot regardless of the budget. Larger than a shard's 2:
    a fleet's sources are many and small, and each snapshot costs a whole sketch (about 5 KB)."""
    interval_ms: int = 200
    """The interval rule's period."""
    idle_ms: int = 2_000
    """Send what is unsent once no number arrived for this long (the budget and growth rules)."""
    heartbeat_ms: int = 10_000
    """Send a heartbeat after this long without a message (``heartbeat_ms``)."""
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
    """The served quantiles (``quantiles``): where the budget counts before the first record."""
    accept_infinity: bool = False
    """Whether +-inf are sketched (``accept_infinity``); otherwise they are counted as rejected, as NaN is."""


@dataclass
class RateBucket:
    """A token bucket: ``rate`` messages a second, ``burst`` at once (the aggregator counts the same way)."""

    rate: float
    """Tokens added per second."""
    burst: int
    """The bucket's depth."""
    tokens: float = -1.0
    """Tokens now (-1: full, before the first message)."""
    last_ms: int = 0
    """When it was last refilled."""

    def take(self, now_ms: int) -> bool:
        """Take a token if there is one (a message may be sent now)."""
        if not self.ready(now_ms):
            return False
        self.tokens -= 1.0
        return True

    def ready(self, now_ms: int) -> bool:
        """Whether a token is there now (refills, takes none)."""
        if self.tokens < 0:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(self.tokens + max(now_ms - self.last_ms, 0) / 1000.0 * self.rate, float(self.burst))
        self.last_ms = max(self.last_ms, now_ms)
        return self.tokens >= 1.0


@dataclass
class SourceState:
    """One source's sketch and what it has sent."""

    name: str
    """The edge shard's name (the source id, and a run token without a state file)."""
    options: SourceOptions = field(default_factory=SourceOptions)
    """How it sketches and sends."""
    sketch: datasketches.kll_doubles_sketch = field(init=False)
    """Every accepted number added so far."""
    seq: int = 0
    """Sequence number of the last snapshot handed over (0: none)."""
    sent_n: int = -1
    """Numbers in that snapshot (-1: none)."""
    rejected: int = 0
    """Numbers refused (NaN; infinities unless accepted)."""
    _rule: ShardEmissionRule = field(init=False, repr=False)
    _emission: EmissionState = field(init=False, repr=False)
    _buffer: list[float] = field(default_factory=list, init=False, repr=False)
    _resend_n: int | None = field(default=None, init=False, repr=False)
    """After a restart: the count of the saved snapshot ``seq``, which may go again under its number."""

    def __post_init__(self) -> None:
        o = self.options
        self.sketch = datasketches.kll_doubles_sketch(o.k)
        self._rule = build_shard_rule(
            o.rule, interval_ms=o.interval_ms, theta=o.theta, heartbeat_ms=o.heartbeat_ms, growth=o.growth,
            shards_hint=1, quantiles=o.quantiles, idle_ms=o.idle_ms,
        )  # fmt: skip
        self._emission = self._rule.new_state()

    @property
    def n(self) -> int:
        """Numbers added and accepted (including any not yet in the sketch's vectorised update)."""
        return int(self.sketch.n) + len(self._buffer)

    def add(self, x: float) -> None:
        """Add one number (collected, then sketched in a vectorised update)."""
        self._buffer.append(x)
        if len(self._buffer) >= _BUFFER:
            self.drain()

    def add_many(self, values: npt.ArrayLike) -> None:
        """Add an array of numbers; NaN (and infinities, unless accepted) are counted as rejected."""
        array = np.array(values, dtype=np.float64, copy=True).ravel()  # a copy: the budget keeps it uncounted
        if array.size == 0:
            return
        good = np.isfinite(array)
        if not good.all():
            if self.options.accept_infinity:
                good = ~np.isnan(array)
            self.rejected += int(array.size - np.count_nonzero(good))
            array = array[good]
        self.sketch.update(array)
        tracker = self._emission.tracker
        if tracker is not None:
            tracker.observe(array)

    def drain(self) -> None:
        """Sketch the single numbers collected by :meth:`add`."""
        if self._buffer:
            buffered, self._buffer = self._buffer, []
            try:
                self.add_many(buffered)
            except (TypeError, ValueError):
                # Something that is not a number was added: each is taken or refused on its own.
                for x in buffered:
                    self._add_one(x)

    def _add_one(self, x: object) -> None:
        try:
            value = float(x)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.rejected += 1
            return
        self.add_many(np.array([value]))

    def see(self, view: GlobalView | None) -> None:
        """A newer ``medians`` record arrived (the budget is checked against it next)."""
        self._emission.see(view)

    def next_message(self, now_ms: int, force: bool = False) -> SourceSnapshot | SourceProgress | None:
        """The message the rule asks for now, if any (``force``: a snapshot of anything unsent).

        A snapshot returned here is numbered and counted as sent: persist the state,
        then send it.
        """
        self.drain()
        n = self.n
        if n == 0 and self.seq == 0:
            return None  # nothing to say yet: an unused source does not announce itself
        self._emission.observe(n, n, None, now_ms)
        if self._emission.changed and (force or self._rule.should_emit(self._emission, now_ms)):
            if self._resend_n != n:  # not the saved snapshot again: a number never used before
                self.seq += 1
            self._resend_n = None
            self.sent_n = n
            urgent = self._rule.urgent(self._emission)
            self._emission.mark_emitted(now_ms, self.sketch)
            return SourceSnapshot.of_sketch(self.name, self.seq, self.sketch, now_ms, self.rejected, urgent)
        if self._rule.should_heartbeat(self._emission, now_ms):
            self._emission.mark_heartbeat(now_ms)
            return SourceProgress(self.name, self.seq, max(self.sent_n, 0), n, now_ms)
        return None

    @property
    def unsent(self) -> bool:
        """Whether numbers were added since the last snapshot."""
        return self.n != self.sent_n

    def to_bytes(self) -> bytes:
        """The state file's value: the sketch, the last sequence number and its count."""
        self.drain()
        header = {"name": self.name, "seq": self.seq, "sent_n": self.sent_n, "rejected": self.rejected}
        return pack_envelope(_STATE_MAGIC, _STATE_VERSION, header, self.sketch.serialize())

    @classmethod
    def from_bytes(cls, data: bytes, options: SourceOptions) -> SourceState:
        """A state saved by :meth:`to_bytes`, ready to go on; ``ValueError`` if it is not one.

        Its first snapshot re-sends the saved sequence number when the sketch is
        exactly what that snapshot carried, and the next number otherwise.
        """
        try:
            envelope = unpack_envelope(data, _STATE_MAGIC, _STATE_VERSION)
            h = envelope.header
            state = cls(str(h["name"]), options)
            state.sketch = datasketches.kll_doubles_sketch.deserialize(envelope.payload)
            state.seq, sent_n, state.rejected = int(h["seq"]), int(h["sent_n"]), int(h["rejected"])
        except (EnvelopeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"not a source state: {exc}") from None
        if int(state.sketch.n) == sent_n and state.seq > 0:
            state._resend_n = sent_n  # sent with these numbers only: it may go again as seq
        state.sent_n = -1  # send at once: the aggregator may not have it
        return state
