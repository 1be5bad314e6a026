"""A local single-node Apache Kafka (KRaft) broker for the CLI and the tests.

Our machines have no Docker engine and reach only Maven Central, so the broker
runs straight from the Kafka jars: ``scripts/kafka/pom.xml`` lists them, ``mvn``
fetches them once into a cache, and ``java kafka.Kafka`` runs one combined
broker+controller bound to 127.0.0.1. Shell: ``scripts/kafka-broker start|stop|status``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

__all__ = [
    "KAFKA_VERSION",
    "BrokerError",
    "BrokerStatus",
    "LocalBroker",
    "LocalBrokerOptions",
    "find_free_port_pair",
    "free_port",
    "main",
]

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO_ROOT / "scripts" / "kafka"
CACHE_ENV = "DMEDIAN_KAFKA_CACHE"
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
_HOST = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# librdkafka logs every refused connection at ERROR; route it to a child logger
# instead of letting it write straight to stderr while we poll a starting broker.
_RDKAFKA_LOGGER = logger.getChild("rdkafka")


class BrokerError(RuntimeError):
    """The local broker could not be fetched, started, reached or stopped."""


@dataclass(frozen=True)
class LocalBrokerOptions:
    """How to run the broker; ``None`` fields are filled in by ``__post_init__``."""

    port: int = 9092
    controller_port: int | None = None  # None -> port + 1
    home: Path | None = None  # None -> <repo>/.cache/kafka/broker-<port>
    cache_dir: Path | None = None  # None -> $DMEDIAN_KAFKA_CACHE or <repo>/.cache/kafka/<version>
    heap: str = "1g"
    start_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        # Frozen, so defaults that depend on other fields are set via object.__setattr__.
        cport = self.port + 1 if self.controller_port is None else self.controller_port
        for p in (self.port, cport):
            if not 0 < p < 65536:
                raise ValueError(f"invalid port {p}")
        if cport == self.port:
            raise ValueError("port and controller_port must differ")
        home = self.home or REPO_ROOT / ".cache" / "kafka" / f"broker-{self.port}"
        env_cache = os.environ.get(CACHE_ENV)
        cache = self.cache_dir or (Path(env_cache) if env_cache else REPO_ROOT / ".cache" / "kafka" / KAFKA_VERSION)
        object.__setattr__(self, "controller_port", cport)
        object.__setattr__(self, "home", home.expanduser().resolve())
        object.__setattr__(self, "cache_dir", cache.expanduser().resolve())


@dataclass(frozen=True)
class BrokerStatus:
    """A snapshot of the broker: process alive, and whether it answers metadata requests."""

    running: bool
    pid: int | None
    bootstrap: str
    answering: bool
    home: Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def find_free_port_pair() -> tuple[int, int]:
    """Return two distinct free ports (client, controller)."""
    # Hold both sockets at once so the kernel cannot hand out the same port twice.
    with socket.socket() as a, socket.socket() as b:
        a.bind((_HOST, 0))
        b.bind((_HOST, 0))
        return int(a.getsockname()[1]), int(b.getsockname()[1])


BROKER_OPEN_FILES = 262_144
"""Open files the broker asks for. Kafka keeps each partition's active segment open,
so 2 x 10,000 partitions with data need more than 20,000 descriptors. Where the hard
limit cannot be raised (no CAP_SYS_RESOURCE), the soft limit goes up to the hard one."""


def _raise_open_files_limit() -> None:
    # Root may raise the hard limit too; anyone else gets the soft limit raised to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(soft, BROKER_OPEN_FILES)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _port_open(port: int, timeout_s: float = 0.5) -> bool:
    # A plain TCP connect is cheap and quiet; used before building a Kafka client.
    try:
        with socket.create_connection((_HOST, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _require(path: Path) -> Path:
    if not path.is_file():
        raise BrokerError(f"required file is missing: {path}")
    return path


def _tail(text: str, lines: int) -> str:
    return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])


def _run(cmd: list[str], timeout_s: float = 120) -> str:
    """Run a helper command (mvn, StorageTool); BrokerError with its output tail if it fails."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"timed out after {timeout_s:.0f}s: {' '.join(cmd)}") from exc
    if res.returncode != 0:
        raise BrokerError(
            f"command failed (exit {res.returncode}): {' '.join(cmd)}\n" + _tail(res.stdout + res.stderr, 40)
        )
    return res.stdout


class LocalBroker:
    """Start, stop and inspect one local broker whose state lives in ``options.home``."""

    def __init__(self, options: LocalBrokerOptions | None = None) -> None:
        self.options = options or LocalBrokerOptions()
        # __post_init__ filled these in; the asserts only narrow the types for mypy.
        assert self.options.home is not None
        assert self.options.cache_dir is not None
        assert self.options.controller_port is not None
        self.port = self.options.port
        self.controller_port: int = self.options.controller_port
        self.home: Path = self.options.home
        self.cache_dir: Path = self.options.cache_dir
        self.log_path = self.home / "broker.log"
        self.pid_path = self.home / "broker.pid"
        self._proc: subprocess.Popen[bytes] | None = None  # set when this object started it

    @property
    def bootstrap(self) -> str:
        return f"{_HOST}:{self.port}"

    def ensure_libs(self) -> Path:
        """Fetch the Kafka jars into ``cache_dir/libs`` (once) and return that directory."""
        pom = _require(SCRIPTS_DIR / "pom.xml")
        libs, marker = self.cache_dir / "libs", self.cache_dir / "libs.complete"
        # The marker holds the pom's hash, so editing the pom triggers a refetch.
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()
        if marker.is_file() and marker.read_text().strip() == digest:
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                "Maven ('mvn') is not on PATH; it is needed once to fetch the Kafka jars "
                f"into {libs} (apt-get install maven), or point {CACHE_ENV} at a filled cache"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Serialise concurrent fetches (parallel test sessions share the cache).
        with open(self.cache_dir / ".fetch.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if marker.is_file() and marker.read_text().strip() == digest:
                return libs
            # Fetch beside libs/ and swap it in: a broker still running from the old
            # libs/ keeps working, and a failed fetch never leaves a half-filled libs/.
            new, old = self.cache_dir / "libs.partial", self.cache_dir / "libs.old"
            for d in (new, old):
                shutil.rmtree(d, ignore_errors=True)
            cmd = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies"]
            logger.info("fetching Kafka %s jars into %s", KAFKA_VERSION, libs)
            started = time.monotonic()
            _run([*cmd, f"-DoutputDirectory={new}"], timeout_s=900)
            if not any(new.glob("kafka_2.13-*.jar")):
                raise BrokerError(f"mvn succeeded but left no kafka_2.13 jar in {new}")
            if libs.exists():
                libs.rename(old)
            new.rename(libs)
            shutil.rmtree(old, ignore_errors=True)
            marker.write_text(digest + "\n")
            logger.info("fetched jars in %.1fs", time.monotonic() - started)
        return libs

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # our child: poll() also reaps it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # Guard against a stale pid file whose pid was reused, and zombies.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True  # no procfs: trust kill(0)
        return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"kafka.Kafka" in cmdline

    def _live_pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid  # our own child is authoritative, even if the pid file went missing
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        if self._alive(pid):
            return pid
        self.pid_path.unlink(missing_ok=True)  # stale
        return None

    def _answering(self, timeout_s: float = 1.0) -> bool:
        if not _port_open(self.port):
            return False
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 2000}, logger=_RDKAFKA_LOGGER)
        try:
            return bool(admin.list_topics(timeout=timeout_s).brokers)
        except KafkaException:  # e.g. timed out: not (yet) answering
            return False

    def _java(self, libs: Path, log4j: Path, *args: str, heap: str | None = None) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("'java' (17 or newer) is not on PATH; Kafka 4 needs it")
        mem = [f"-Xmx{heap}"] if heap else []
        # Java expands the "dir/*" classpath wildcard itself; no shell involved.
        return [java, *mem, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{libs}/*", *args]

    def _write_server_properties(self) -> Path:
        c, p = self.controller_port, self.port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{_HOST}:{c}",
            "listeners": f"PLAINTEXT://{_HOST}:{p},CONTROLLER://{_HOST}:{c}",
            "advertised.listeners": f"PLAINTEXT://{_HOST}:{p}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            # One node: every internal topic must make do with a single replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",  # tests should not wait 3 s per group
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "log.cleaner.enable": "true",  # compacted topics are used for state
            "message.max.bytes": str(MAX_MESSAGE_BYTES),
            "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
        }
        path = self.home / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def start(self) -> None:
        """Start the broker (or adopt ours if it is already up) and wait until it answers."""
        pid = self._live_pid()
        if _port_open(self.port):
            if pid is None:
                raise BrokerError(
                    f"something else is listening on {self.bootstrap} (no live broker recorded in {self.pid_path})"
                )
            logger.info("broker already running (pid %d) on %s", pid, self.bootstrap)
            self.wait_ready()
            return
        if pid is not None:  # ours, still starting up
            self.wait_ready()
            return
        if _port_open(self.controller_port):
            raise BrokerError(f"controller port {_HOST}:{self.controller_port} is already in use")
        libs = self.ensure_libs()
        log4j = _require(SCRIPTS_DIR / "log4j2.properties")
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        props = self._write_server_properties()
        # Format only a fresh data dir: reformatting would lose the cluster id and topics.
        if not (self.home / "data" / "meta.properties").is_file():
            out = _run(self._java(libs, log4j, "kafka.tools.StorageTool", "random-uuid"))
            cluster_id = out.strip().splitlines()[-1].strip()
            _run(self._java(libs, log4j, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)))
        cmd = self._java(libs, log4j, "kafka.Kafka", str(props), heap=self.options.heap)
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {' '.join(cmd)}\n".encode())
            log.flush()
            # The broker inherits this process's open-files limit (a preexec hook is unsafe with threads).
            _raise_open_files_limit()
            # New session: Ctrl-C in the launching terminal must not kill the broker.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        logger.info("started broker pid %d on %s (log %s)", self._proc.pid, self.bootstrap, self.log_path)
        try:
            self.wait_ready()
        except BrokerError:
            self.stop(timeout_s=10)  # do not leak a half-started JVM
            raise

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the broker answers a metadata request; BrokerError otherwise."""
        timeout = self.options.start_timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        deadline = started + timeout
        while True:
            pid = self._live_pid()
            if pid is None:
                raise BrokerError(
                    f"broker on {self.bootstrap} is not running (exited?); "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if self._answering():
                logger.info("broker ready on %s after %.1fs", self.bootstrap, time.monotonic() - started)
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"broker on {self.bootstrap} not ready after {timeout:.0f}s; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def _signal_and_wait(self, pid: int, sig: signal.Signals, timeout_s: float) -> bool:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._alive(pid):
                return True
            time.sleep(0.1)
        return not self._alive(pid)

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM (controlled shutdown), SIGKILL after ``timeout_s``; no-op when not running."""
        pid = self._live_pid()
        if pid is not None:
            if not self._signal_and_wait(pid, signal.SIGTERM, timeout_s):
                logger.warning("broker pid %d ignored SIGTERM for %.0fs; killing", pid, timeout_s)
                self.kill()
            logger.info("stopped broker pid %d", pid)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would; data is left as is for the next start()."""
        pid = self._live_pid()
        if pid is not None and not self._signal_and_wait(pid, signal.SIGKILL, 10):
            raise BrokerError(f"broker pid {pid} survived SIGKILL")
        self._forget()

    def _forget(self) -> None:
        # poll() reaps our child once it has exited: no zombie, no ResourceWarning at exit.
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
        self.pid_path.unlink(missing_ok=True)

    def status(self) -> BrokerStatus:
        pid = self._live_pid()
        return BrokerStatus(
            running=pid is not None, pid=pid, bootstrap=self.bootstrap, answering=self._answering(), home=self.home
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_bytes()[-256 * 1024 :]  # logs can grow; read the end
        except OSError:
            return ""
        return _tail(data.decode("utf-8", errors="replace"), lines)

    def reset(self) -> None:
        """Stop the broker and delete its home (config, data, log)."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kafka-broker", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status", "log"])
    parser.add_argument("--port", type=int, default=9092, help="client port (default 9092)")
    parser.add_argument("--lines", type=int, default=40, help="lines shown by 'log'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger(_RDKAFKA_LOGGER.name).setLevel(logging.CRITICAL)  # expected refusals
    broker = LocalBroker(LocalBrokerOptions(port=args.port))
    try:
        if args.command == "start":
            broker.start()
            print(broker.bootstrap)
        elif args.command == "stop":
            broker.stop()
        elif args.command == "log":
            print(broker.log_tail(args.lines))
        else:
            st = broker.status()
            state = "answering" if st.answering else "running" if st.running else "stopped"
            print(f"{state} bootstrap={st.bootstrap} pid={st.pid} home={st.home}")
            return 0 if st.answering else 3  # 3 = "not running", as in LSB init scripts
    except BrokerError as exc:
        print(f"kafka-broker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
