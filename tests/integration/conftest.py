"""Per-test deployments on the session broker, with worker logs on failure."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pluggy
import pytest

from tests.broker_fixture import BrokerHandle
from tests.integration.harness import Deployment

_DEPLOYMENTS = pytest.StashKey[list[Deployment]]()


@pytest.fixture
def deploy(kafka: BrokerHandle, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Deployment]]:
    """Make a deployment (unique topics and app id) on the session broker; workers stop at teardown."""
    made: list[Deployment] = []
    request.node.stash[_DEPLOYMENTS] = made

    def make(partitions: int = 8, **settings: str) -> Deployment:
        deployment = Deployment(kafka.bootstrap, tmp_path / f"d{len(made)}", partitions, **settings)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for deployment in item.stash.get(_DEPLOYMENTS, []):
            report.sections.append(("worker logs (tail)", deployment.worker_logs()))
