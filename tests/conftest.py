"""Session-wide fixtures: one real Kafka broker for all integration tests.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else a testcontainers Kafka if
a Docker engine answers, else the project's local broker on free ports. When an
integration test fails, the broker's log tail is attached to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pluggy
import pytest

from tests.broker_fixture import BrokerHandle, provide_bootstrap

_BROKER_KEY = pytest.StashKey[BrokerHandle]()


@pytest.fixture(scope="session")
def kafka(request: pytest.FixtureRequest) -> Iterator[BrokerHandle]:
    """A ready broker for the whole session."""
    with provide_bootstrap() as handle:
        request.session.stash[_BROKER_KEY] = handle
        yield handle


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    handle = item.session.stash.get(_BROKER_KEY, None)
    if report.failed and handle is not None and "kafka" in getattr(item, "fixturenames", ()):
        report.sections.append(("kafka broker log (tail)", handle.log_tail() or "(no log for this broker kind)"))
