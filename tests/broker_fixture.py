"""Give tests a Kafka broker: an external one, a testcontainers one, or a local one.

Plain module (not a conftest) so conftest files can import it. Order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set -> use that broker as is ("external");
2. a Docker engine answers -> ``KafkaContainer`` from testcontainers ("testcontainers");
3. otherwise -> a :class:`pipeline.localbroker.LocalBroker` on free ports with its
   home in a temp dir, removed at exit ("local"). The jar cache is the default
   one, so only the first run on a machine pays for the Maven fetch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.localbroker import (
    MAX_MESSAGE_BYTES,
    LocalBroker,
    LocalBrokerOptions,
    find_free_port_pair,
)

__all__ = ["BOOTSTRAP_ENV", "BrokerHandle", "docker_available", "provide_bootstrap"]

logger = logging.getLogger(__name__)

BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"


class BrokerHandle:
    """What a test needs to know about the broker it was given."""

    def __init__(
        self,
        bootstrap: str,
        kind: str,
        *,
        local: LocalBroker | None = None,
        log_tail: Callable[[], str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.kind = kind  # "external" | "testcontainers" | "local"
        # Crash tests may want the LocalBroker itself (e.g. kill()); None otherwise.
        self.local = local
        self._log_tail = log_tail

    def log_tail(self) -> str:
        """Last broker log lines, for failure messages; empty for external brokers."""
        return self._log_tail() if self._log_tail is not None else ""

    def restart(self) -> None:
        """Stop and start the broker on the same data (same bootstrap address)."""
        if self.local is None:
            raise NotImplementedError(f"restart() is not supported for a {self.kind} broker")
        self.local.stop()
        self.local.start()

    def __repr__(self) -> str:
        return f"BrokerHandle(kind={self.kind!r}, bootstrap={self.bootstrap!r})"


def docker_available(timeout_s: float = 5.0) -> bool:
    """True if a Docker engine answers ``docker info`` within ``timeout_s``."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        res = subprocess.run([docker, "info"], capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


@contextlib.contextmanager
def _external(bootstrap: str) -> Iterator[BrokerHandle]:
    logger.info("using external Kafka at %s", bootstrap)
    yield BrokerHandle(bootstrap, "external")


@contextlib.contextmanager
def _testcontainers() -> Iterator[BrokerHandle]:
    # Imported lazily: the local path must work without Docker-related imports.
    # testcontainers.kafka is a deprecated alias that warns (an error under
    # filterwarnings=error), so prefer the new home and fall back for old versions.
    try:
        from testcontainers.community.kafka import KafkaContainer  # noqa: PLC0415
    except ImportError:
        from testcontainers.kafka import KafkaContainer  # noqa: PLC0415

    container = (
        KafkaContainer()
        .with_kraft()
        .with_env("KAFKA_MESSAGE_MAX_BYTES", str(MAX_MESSAGE_BYTES))
        .with_env("KAFKA_REPLICA_FETCH_MAX_BYTES", str(MAX_MESSAGE_BYTES))
        .with_env("KAFKA_LOG_CLEANER_ENABLE", "true")
    )
    try:
        # Explicit start() rather than "with": its default 30 s wait is tight for a
        # cold JVM on a 2-core CI machine. Inside the try so a failed wait still removes it.
        container.start(timeout=120)
        bootstrap = container.get_bootstrap_server()
        logger.info("using testcontainers Kafka at %s", bootstrap)

        def tail() -> str:
            out, err = container.get_logs()
            text = (out + err).decode("utf-8", errors="replace")
            return "\n".join(text.splitlines()[-40:])

        yield BrokerHandle(bootstrap, "testcontainers", log_tail=tail)
    finally:
        container.stop()


@contextlib.contextmanager
def _local() -> Iterator[BrokerHandle]:
    tmp = Path(tempfile.mkdtemp(prefix="dmedian-kafka-"))
    port, controller_port = find_free_port_pair()
    broker = LocalBroker(LocalBrokerOptions(port=port, controller_port=controller_port, home=tmp / "broker"))
    try:
        broker.start()
        logger.info("using local Kafka at %s (home %s)", broker.bootstrap, broker.home)
        yield BrokerHandle(broker.bootstrap, "local", local=broker, log_tail=broker.log_tail)
    finally:
        broker.reset()
        shutil.rmtree(tmp, ignore_errors=True)


def provide_bootstrap() -> contextlib.AbstractContextManager[BrokerHandle]:
    """Context manager yielding a ready broker; see the module docstring for the order."""
    external = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if external:
        return _external(external)
    if docker_available():
        return _testcontainers()
    return _local()
