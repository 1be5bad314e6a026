"""The worker's log: the group's expected start-up chatter is not an ERROR.

While a consumer group forms, aiokafka logs at ERROR every retry of a coordinator
that is not available yet (a fresh broker creates ``__consumer_offsets``) and every
metadata refresh that does not see Faust's just-created leader topic
(``<app_id>-__assignor-__leader``). Both are retried and normal; an operator greps
for ERROR. :class:`ExpectedStartupNoise` re-levels exactly those records to INFO
while they last less than ``grace_s``; a condition that lasts longer is a real
problem, and its records stay ERROR.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["ExpectedStartupNoise", "install_worker_log_filters"]

logger = logging.getLogger(__name__)

_COORDINATOR_LOGGER = "aiokafka.consumer.group_coordinator"
_CLUSTER_LOGGER = "aiokafka.cluster"
_COORDINATOR_MESSAGE = "Group Coordinator Request failed: %s"
_TOPIC_MESSAGE = "Topic %s not found in cluster metadata"
_LEADER_TOPIC_SUFFIX = "-__assignor-__leader"
# aiokafka's error classes for a coordinator that is loading, moving or not there yet.
_COORDINATOR_SETTLING = frozenset(
    {"GroupCoordinatorNotAvailableError", "GroupLoadInProgressError", "NotCoordinatorForGroupError"}
)  # fmt: skip


class ExpectedStartupNoise(logging.Filter):
    """Re-levels the group's expected, retried start-up errors to INFO while they are short-lived.

    A streak of such records that has lasted ``grace_s`` (with gaps under ``gap_s``)
    is left at ERROR from then on, until it stops.
    """

    def __init__(self, grace_s: float = 60.0, gap_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._grace_s, self._gap_s, self._clock = grace_s, gap_s, clock
        self._streaks: dict[str, tuple[float, float]] = {}  # kind -> (first, last) of the current streak

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _expected_kind(record)
        if kind is None:
            return True
        now = self._clock()
        first, last = self._streaks.get(kind, (now, now))
        if now - last > self._gap_s:
            first = now  # the earlier streak ended: a new one starts
        self._streaks[kind] = (first, now)
        if now - first >= self._grace_s:
            return True  # it has lasted too long to be the group forming: leave it an ERROR
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def _expected_kind(record: logging.LogRecord) -> str | None:
    """Which expected start-up error ``record`` is, or None for any other record."""
    if record.levelno != logging.ERROR or not isinstance(record.args, tuple) or len(record.args) != 1:
        return None
    arg = record.args[0]
    if record.name == _COORDINATOR_LOGGER and record.msg == _COORDINATOR_MESSAGE:
        return "coordinator" if type(arg).__name__ in _COORDINATOR_SETTLING else None
    if record.name == _CLUSTER_LOGGER and record.msg == _TOPIC_MESSAGE:
        return "leader-topic" if str(arg).endswith(_LEADER_TOPIC_SUFFIX) else None
    return None


def install_worker_log_filters() -> ExpectedStartupNoise:
    """Install the filter on the two aiokafka loggers that emit the group's start-up noise."""
    noise = ExpectedStartupNoise()
    for name in (_COORDINATOR_LOGGER, _CLUSTER_LOGGER):
        logging.getLogger(name).addFilter(noise)
    return noise
