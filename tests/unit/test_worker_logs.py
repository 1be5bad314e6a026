"""The group's expected start-up errors are INFO while they are short; everything else is left alone."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pipeline.cli.worker_logs import ExpectedStartupNoise


class GroupCoordinatorNotAvailableError(Exception):
    """Named as aiokafka's class: the filter matches the class name, not the import."""


class UnknownMemberIdError(Exception):
    """An error that is not about the group forming."""


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(name: str, msg: str, arg: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, (arg,), None)


def _coordinator(arg: object) -> logging.LogRecord:
    return _record("aiokafka.consumer.group_coordinator", "Group Coordinator Request failed: %s", arg)


def _leader_topic(topic: str) -> logging.LogRecord:
    return _record("aiokafka.cluster", "Topic %s not found in cluster metadata", topic)


@pytest.fixture(autouse=True)
def _info_logged() -> Iterator[None]:
    """The worker logs at INFO (its default ``log_level``)."""
    loggers = [logging.getLogger(name) for name in ("aiokafka.cluster", "aiokafka.consumer.group_coordinator")]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
    yield
    for logger, level in zip(loggers, before, strict=True):
        logger.setLevel(level)


def test_the_expected_messages_become_info() -> None:
    noise = ExpectedStartupNoise(clock=_Clock())
    for record in (_coordinator(GroupCoordinatorNotAvailableError()), _leader_topic("dmedian-__assignor-__leader")):
        assert noise.filter(record)
        assert (record.levelno, record.levelname) == (logging.INFO, "INFO")


def test_other_errors_stay_errors() -> None:
    noise = ExpectedStartupNoise(clock=_Clock())
    others = [
        _coordinator(UnknownMemberIdError()),
        _leader_topic("numbers"),  # an input topic missing is a real problem
        _record("aiokafka.consumer.group_coordinator", "Heartbeat failed: %r", GroupCoordinatorNotAvailableError()),
        _record("faust.worker", "Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError()),
    ]
    for record in others:
        assert noise.filter(record)
        assert record.levelno == logging.ERROR


def test_a_condition_that_lasts_past_the_grace_period_is_an_error_again() -> None:
    clock = _Clock()
    noise = ExpectedStartupNoise(grace_s=60.0, gap_s=10.0, clock=clock)
    levels = []
    for second in range(0, 70, 2):  # a coordinator missing for 70 s, retried every 2 s
        clock.now = float(second)
        record = _coordinator(GroupCoordinatorNotAvailableError())
        noise.filter(record)
        levels.append(record.levelno)
    assert set(levels[:30]) == {logging.INFO}
    assert set(levels[30:]) == {logging.ERROR}
    clock.now = 200.0  # it ended; a later one (a broker restart) starts a new streak
    record = _coordinator(GroupCoordinatorNotAvailableError())
    noise.filter(record)
    assert record.levelno == logging.INFO


def test_a_demoted_record_is_dropped_where_info_is_not_logged() -> None:
    logging.getLogger("aiokafka.cluster").setLevel(logging.WARNING)  # restored by the fixture
    assert not ExpectedStartupNoise(clock=_Clock()).filter(_leader_topic("x-__assignor-__leader"))
