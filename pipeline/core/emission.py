"""When a shard sends a snapshot (or a heartbeat), and when the aggregator publishes.

Three rules, behind one interface the shard agent calls after every batch and on
its timer tick:

* :class:`BudgetRule` (the default): send when the unsent numbers could have
  moved a tracked quantile's global rank by more than this shard's share of the
  error budget theta (see :mod:`pipeline.core.budget`), when the count grew by
  ``growth`` since the last snapshot, or the first time. Every record then states
  ``rank_bound = rank_error + theta``.
* :class:`GeometricRule`: send when the count grew by ``growth`` (e.g. doubled).
* :class:`IntervalRule`: send at most every ``interval_ms``, on change (also the
  aggregator's publish throttle).

The first two also send the first time, and when the shard has been idle for
``idle_ms`` with something unsent (so the record's ``n`` catches up when the input
stops).

The shard side, per batch and per tick::

    state = rule.new_state()                               # once per shard
    state.observe(shard.n, shard.last_offset, result.accepted_values, now_ms)
    if rule.should_emit(state, now_ms):     send SketchSnapshot.from_state(shard, now_ms, rule.urgent(state))
                                             state.mark_emitted(now_ms, shard.sketch)
    elif rule.should_heartbeat(state, now_ms): send a ShardProgress; state.mark_heartbeat(now_ms)
    due = rule.next_due_ms(state)           # look again then (or on the next batch, or record)
    # on a newer record from ``medians``, before the next check:  state.see(GlobalView.from_record(record))

A snapshot resets what the budget counts. Under the budget rule every snapshot is
*urgent*: it asks the aggregator to publish at once, because until a record
reflects it the latest record no longer covers this shard's numbers fully. A
heartbeat is a header-only progress message
(:class:`~pipeline.core.wire.ShardProgress`, key ``progress_key(shard)``): about a
hundred bytes, telling the aggregator the shard is alive and how far it ingested.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import datasketches
import numpy as np
import numpy.typing as npt

from pipeline.core.budget import BudgetTracker, GlobalView

__all__ = [
    "BudgetRule",
    "EmissionRule",
    "EmissionState",
    "GeometricRule",
    "IntervalRule",
    "RuleName",
    "ShardEmissionRule",
    "build_shard_rule",
]

logger = logging.getLogger(__name__)

RuleName = Literal["budget", "interval", "geometric"]


@dataclass
class EmissionState:
    """What a rule needs to know about one shard (or the aggregator's output)."""

    last_emit_ms: int = 0
    """When the last snapshot or record was sent (0: never)."""
    emitted_version: int = -1
    """The state version (e.g. last source offset) it reflected."""
    version: int = -1
    """The current state version."""
    n: int = 0
    """Numbers the shard has ingested (its state's ``n``)."""
    emitted_n: int = -1
    """``n`` at the last snapshot (-1: none sent yet, e.g. a new or restarted shard)."""
    last_signal_ms: int = 0
    """When the last snapshot or heartbeat was sent (0: never)."""
    last_change_ms: int = 0
    """When ``n`` or ``version`` last changed (0: never)."""
    tracker: BudgetTracker | None = None
    """The budget's counts (only the budget rule keeps them)."""

    @property
    def changed(self) -> bool:
        """Whether there is something not yet sent."""
        return self.version != self.emitted_version

    def observe(
        self, n: int, version: int, values: npt.NDArray[np.float64] | None = None, now_ms: int | None = None
    ) -> None:
        """The shard now holds ``n`` numbers up to ``version``; ``values`` are the batch's new numbers."""
        if now_ms is not None and (n, version) != (self.n, self.version):
            self.last_change_ms = now_ms
        self.n = n
        self.version = version
        if self.tracker is not None and values is not None:
            self.tracker.observe(values)

    def see(self, view: GlobalView | None) -> None:
        """A newer ``medians`` record arrived (call :meth:`should_emit` next: it may move a quantile)."""
        if self.tracker is not None:
            self.tracker.see(view)

    def mark_emitted(self, now_ms: int, sketch: datasketches.kll_doubles_sketch | None = None) -> None:
        """Record that the current version was just sent (``sketch``: the shard's, to lay the budget's grid)."""
        self.last_emit_ms = now_ms
        self.last_signal_ms = now_ms
        self.emitted_version = self.version
        self.emitted_n = self.n
        if self.tracker is not None:
            self.tracker.anchor(sketch)

    def mark_heartbeat(self, now_ms: int) -> None:
        """Record that a heartbeat (progress message) was just sent."""
        self.last_signal_ms = now_ms


def _first_data(state: EmissionState) -> bool:
    # A shard the aggregator has never heard of, or only as empty, sends at once:
    # until then none of its numbers are covered by any bound.
    return state.emitted_n < 0 or (state.emitted_n == 0 and state.n > 0)


def _idle_flush(state: EmissionState, now_ms: int, idle_ms: int | None) -> bool:
    # The input stopped with numbers unsent: send them, so n catches up (and a demo ends).
    return idle_ms is not None and state.changed and now_ms - state.last_change_ms >= idle_ms


def _heartbeat_due(state: EmissionState, now_ms: int, heartbeat_ms: int | None) -> bool:
    return heartbeat_ms is not None and now_ms - state.last_signal_ms >= heartbeat_ms


def _earliest(*deadlines: int | None) -> int | None:
    present = [deadline for deadline in deadlines if deadline is not None]
    return min(present) if present else None


def _idle_deadline(state: EmissionState, idle_ms: int | None) -> int | None:
    # When _idle_flush turns true if nothing else happens (it never does with nothing unsent).
    return state.last_change_ms + idle_ms if idle_ms is not None and state.changed else None


def _heartbeat_deadline(state: EmissionState, heartbeat_ms: int | None) -> int | None:
    return state.last_signal_ms + heartbeat_ms if heartbeat_ms is not None else None


class EmissionRule(Protocol):
    """Decides whether to send now."""

    def should_emit(self, state: EmissionState, now_ms: int) -> bool:
        """Whether to send the current state at ``now_ms``."""
        ...  # pragma: no cover


class ShardEmissionRule(EmissionRule, Protocol):
    """A shard's rule: snapshots, heartbeats, and the state it needs."""

    def should_heartbeat(self, state: EmissionState, now_ms: int) -> bool:
        """Whether to send a progress message now (asked when :meth:`should_emit` said no)."""
        ...  # pragma: no cover

    def new_state(self) -> EmissionState:
        """A fresh state for one shard, with whatever the rule counts."""
        ...  # pragma: no cover

    def urgent(self, state: EmissionState) -> bool:
        """Whether the snapshot about to be sent should make the aggregator publish at once
        (ask before :meth:`EmissionState.mark_emitted`, which resets the counts)."""
        ...  # pragma: no cover

    def next_due_ms(self, state: EmissionState) -> int | None:
        """The earliest time :meth:`should_emit` or :meth:`should_heartbeat` may turn true by time alone.

        Before it, both stay false unless the state changes (new numbers, a newer record,
        a send). None: time alone never makes either true. The shard service keeps this
        deadline per shard and looks at a shard on its timer only once it is due.
        """
        ...  # pragma: no cover


class _WithoutBudget:
    """The shard-rule parts of rules that spend no budget: plain state, heartbeats, never urgent."""

    heartbeat_ms: int | None

    def should_heartbeat(self, state: EmissionState, now_ms: int) -> bool:
        """See :class:`ShardEmissionRule`."""
        return _heartbeat_due(state, now_ms, self.heartbeat_ms)

    def new_state(self) -> EmissionState:
        """See :class:`ShardEmissionRule`."""
        return EmissionState()

    def urgent(self, state: EmissionState) -> bool:  # noqa: ARG002 (no budget, never urgent)
        """See :class:`ShardEmissionRule`."""
        return False


@dataclass(frozen=True)
class IntervalRule(_WithoutBudget):
    """Send at most every ``interval_ms``, and only when something changed.

    Communication is bounded by one message per interval per shard, whatever the
    input rate; a change is sent within one interval (plus the flush timer's tick).
    It bounds nothing in rank: a record covers only the numbers its snapshots reflect.
    """

    interval_ms: int
    """Minimum time between two sends."""
    heartbeat_ms: int | None = None
    """Send a progress message after this long without any message (None: never)."""

    def should_emit(self, state: EmissionState, now_ms: int) -> bool:
        """See :class:`EmissionRule`."""
        return state.changed and now_ms - state.last_emit_ms >= self.interval_ms

    def next_due_ms(self, state: EmissionState) -> int | None:
        """See :class:`ShardEmissionRule`."""
        interval = state.last_emit_ms + self.interval_ms if state.changed else None
        return _earliest(interval, _heartbeat_deadline(state, self.heartbeat_ms))


@dataclass(frozen=True)
class GeometricRule(_WithoutBudget):
    """Send when the shard's count reached ``growth`` times its count at the last snapshot.

    O(log n) snapshots per shard; the aggregator's ``n`` is at least 1/growth of
    each shard's. It bounds nothing in rank either: the unsent numbers can be up
    to (growth - 1) times the reflected ones.
    """

    growth: float = 2.0
    """Count ratio that triggers a snapshot (> 1)."""
    heartbeat_ms: int | None = 10_000
    """Send a progress message after this long without any message (None: never)."""
    idle_ms: int | None = None
    """Send what is unsent once no number arrived for this long (None: never)."""

    def __post_init__(self) -> None:
        if not self.growth > 1.0:
            raise ValueError(f"growth must be > 1, got {self.growth}")

    def should_emit(self, state: EmissionState, now_ms: int) -> bool:
        """See :class:`EmissionRule`."""
        return state.changed and (
            _first_data(state) or state.n >= self.growth * state.emitted_n or _idle_flush(state, now_ms, self.idle_ms)
        )

    def next_due_ms(self, state: EmissionState) -> int | None:
        """See :class:`ShardEmissionRule`: the idle flush or the heartbeat (growth does not wait on time)."""
        return _earliest(_idle_deadline(state, self.idle_ms), _heartbeat_deadline(state, self.heartbeat_ms))


@dataclass(frozen=True)
class BudgetRule:
    """Send when the unsent numbers may have spent this shard's share of the error budget.

    Also sends the first time, and when the count grew by ``growth`` since the last
    snapshot (which is also the whole rule until the shard has seen a record, and
    keeps the aggregator's ``n`` within a factor ``growth`` of the truth).
    """

    theta: float = 0.005
    """The error budget: the record's bound is the sketch's rank error plus theta."""
    growth: float = 2.0
    """Count ratio that triggers a snapshot regardless of the budget (> 1)."""
    heartbeat_ms: int | None = 10_000
    """Send a progress message after this long without any message (None: never)."""
    shards_hint: int = 1
    """A lower bound on the number of shards (the input topic's partitions)."""
    idle_ms: int | None = None
    """Send what is unsent once no number arrived for this long (None: never)."""
    quantiles: tuple[float, ...] = (0.5,)
    """The configured quantiles (the median is always tracked): where to count before any record."""

    def __post_init__(self) -> None:
        if not 0.0 < self.theta < 1.0:
            raise ValueError(f"theta must be in (0, 1), got {self.theta}")
        if not self.growth > 1.0:
            raise ValueError(f"growth must be > 1, got {self.growth}")

    def should_emit(self, state: EmissionState, now_ms: int) -> bool:
        """See :class:`EmissionRule`."""
        if not state.changed:
            return False
        if _first_data(state) or state.n >= self.growth * state.emitted_n or _idle_flush(state, now_ms, self.idle_ms):
            return True
        return state.tracker is not None and state.tracker.over_budget()

    def should_heartbeat(self, state: EmissionState, now_ms: int) -> bool:
        """See :class:`ShardEmissionRule`."""
        return _heartbeat_due(state, now_ms, self.heartbeat_ms)

    def next_due_ms(self, state: EmissionState) -> int | None:
        """See :class:`ShardEmissionRule`: the idle flush or the heartbeat.

        The budget check does not wait on time: it moves with new numbers (checked on
        each batch) and with a newer record (checked for the shards with unsent numbers).
        """
        return _earliest(_idle_deadline(state, self.idle_ms), _heartbeat_deadline(state, self.heartbeat_ms))

    def new_state(self) -> EmissionState:
        """See :class:`ShardEmissionRule`."""
        expected = tuple(sorted({0.5, *self.quantiles}))
        return EmissionState(tracker=BudgetTracker(self.theta, self.shards_hint, expected))

    def urgent(self, state: EmissionState) -> bool:  # noqa: ARG002 (always, see below)
        """See :class:`ShardEmissionRule`: always.

        A snapshot resets the counts the latest record relies on: the numbers before
        it stop being checked against that record (their deviation, up to this
        shard's share, stays), and the numbers after it start from zero. Until the
        aggregator publishes a record that reflects the snapshot, this shard could
        use up to twice its share, so the aggregator must publish at once. Snapshots
        are rare under this rule, so this costs few records.
        """
        return True


def build_shard_rule(
    name: RuleName,
    *,
    interval_ms: int,
    theta: float,
    heartbeat_ms: int,
    growth: float,
    shards_hint: int,
    quantiles: tuple[float, ...] = (0.5,),
    idle_ms: int | None = None,
) -> ShardEmissionRule:
    """The shard rule named by the ``emission_rule`` setting, from the other settings.

    ``interval_ms`` (``emit_interval_ms``) is the interval rule's period, and the
    other rules' idle flush (unless ``idle_ms`` is given): what is unsent goes out
    once the input paused that long.
    """
    idle = interval_ms if idle_ms is None else idle_ms
    if name == "budget":
        return BudgetRule(theta, growth, heartbeat_ms, shards_hint, idle_ms=idle, quantiles=quantiles)
    if name == "geometric":
        return GeometricRule(growth, heartbeat_ms, idle_ms=idle)
    if name == "interval":
        return IntervalRule(interval_ms, heartbeat_ms)
    raise ValueError(f"unknown emission rule {name!r} (budget, interval or geometric)")
