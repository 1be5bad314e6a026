"""``SketchingSource``: sketch numbers where they are made, send snapshots instead of numbers.

A source keeps a KLL sketch of its own numbers in its own process and sends
snapshots of it to ``sketches`` as an *edge shard*, beside the pipeline's
partition shards: a few KB when its numbers could move a served quantile, not 8
bytes or more a number. The aggregator merges it with everything else::

    from pipeline.source import SketchingSource

    with SketchingSource("checkout-latency", state_path="var/sources/checkout") as source:
        source.add(12.5)
        source.add_many(latencies)      # a numpy array or any sequence of floats

Durability is the caller's choice:

* with ``state_path`` the sketch and the sequence number are saved (RocksDB,
  synced) before every snapshot and every ``save_every_ms``. A restarted source
  resumes them: nothing it sent is counted twice, and nothing added before a clean
  ``close()`` is lost. A crash loses what was added since the last save.
* without it, each run is an edge shard of its own, named ``<id>@<run token>``:
  the numbers of earlier runs stay in the estimate (a stopped run shows as a stale
  source until retired), and a crash loses what was added since the run's last
  snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from pathlib import Path
from types import TracebackType

import numpy.typing as npt

from config import Settings, load_settings
from pipeline.core.budget import GlobalView
from pipeline.core.source_contract import check_source_name, source_key, source_progress_key
from pipeline.core.source_state import RateBucket, SourceOptions, SourceState
from pipeline.core.source_wire import SourceSnapshot
from pipeline.core.wire import SnapshotError
from pipeline.source.sender import SnapshotSender
from pipeline.source.state_file import SourceStateFile

__all__ = ["SketchingSource", "SourceError", "check_source_id", "run_token", "source_options"]

logger = logging.getLogger(__name__)

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class SourceError(RuntimeError):
    """A source cannot start or could not deliver what it had; the message names the fix."""


def source_options(settings: Settings) -> SourceOptions:
    """A source's options from the pipeline's settings (the same rule, budget, k and quantiles as a shard)."""
    return SourceOptions(
        k=settings.sketch_k,
        rule=settings.emission_rule,
        theta=settings.error_budget,
        interval_ms=settings.emit_interval_ms,
        heartbeat_ms=settings.heartbeat_ms,
        quantiles=settings.quantiles,
        accept_infinity=settings.accept_infinity,
    )


def check_source_id(source_id: str, settings: Settings) -> None:
    """Raise :class:`SourceError` naming the rule if ``source_id`` is not one the aggregator accepts."""
    if "@" in source_id:
        raise SourceError(f"source id {source_id!r}: '@' starts a run token, which the source adds itself")
    try:
        check_source_name(source_id, settings.source_id_pattern)
    except SnapshotError as exc:
        raise SourceError(f"source id: {exc.detail}") from None


def run_token() -> str:
    """A run token: the start time in base 36 (ms, 8 characters) and 4 random characters."""
    value, digits = int(time.time() * 1000), []
    while value:
        value, digit = divmod(value, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits)) + "".join(secrets.choice(_BASE36) for _ in range(4))


class SketchingSource:
    """One source of numbers that sends snapshots of its own sketch (see the module docs)."""

    def __init__(
        self,
        source_id: str,
        settings: Settings | None = None,
        *,
        state_path: str | Path | None = None,
        options: SourceOptions | None = None,
        sender: SnapshotSender | None = None,
        save_every_ms: int = 1_000,
    ) -> None:
        self.settings = settings or load_settings()
        """Where to send, and the defaults of ``options``."""
        check_source_id(source_id, self.settings)
        self.options = options or source_options(self.settings)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._file = SourceStateFile(state_path) if state_path is not None else None
        self._state = self._load(source_id)
        self._save_every_ms = save_every_ms
        self._saved_n = self._state.n
        self._last_save_ms = 0
        self._bucket = RateBucket(self.settings.source_messages_per_s, self.settings.source_burst)
        self._closed = False
        self._own_sender = sender is None
        self._sender = sender or SnapshotSender(self.settings)
        self._sender.register(self)

    def _load(self, source_id: str) -> SourceState:
        if self._file is None:
            return SourceState(f"{source_id}@{run_token()}", self.options)
        saved = self._file.load()
        if saved is None:
            return SourceState(source_id, self.options)
        try:
            state = SourceState.from_bytes(saved, self.options)
        except ValueError as exc:
            self._file.close()
            raise SourceError(f"{self._file.path}: {exc} (move it away to start this source afresh)") from None
        if state.name != source_id:
            self._file.close()
            raise SourceError(f"{self._file.path} holds the state of source {state.name!r}, not {source_id!r}")
        logger.info("source %s resumed from %s: n=%d, snapshot %d", source_id, self._file.path, state.n, state.seq)
        return state

    @property
    def name(self) -> str:
        """The edge shard's name on ``sketches``: the id, plus ``@<run token>`` without a state file."""
        return self._state.name

    @property
    def n(self) -> int:
        """Numbers added and accepted so far (those in the state resumed from included)."""
        with self._lock:
            return self._state.n

    @property
    def rejected(self) -> int:
        """Numbers refused so far (NaN; infinities unless ``accept_infinity``)."""
        with self._lock:
            return self._state.rejected

    @property
    def seq(self) -> int:
        """Sequence number of the last snapshot handed to the producer."""
        with self._lock:
            return self._state.seq

    def add(self, x: float) -> None:
        """Add one number (never waits for the network)."""
        # acquire/release rather than ``with``: 180 against 230 ns a number (scripts/bench_sources.py).
        self._lock.acquire()
        try:
            self._state.add(x)
        finally:
            self._lock.release()

    def add_many(self, values: npt.ArrayLike) -> None:
        """Add an array of numbers (never waits for the network)."""
        with self._lock:
            self._state.add_many(values)

    def reject(self, count: int = 1) -> None:
        """Count numbers refused before they reached the source (unparsable input): they show in ``rejected``."""
        with self._lock:
            self._state.rejected += count

    def serve(self, now_ms: int, view: GlobalView | None, sender: SnapshotSender, force: bool = False) -> bool:
        """The sender's call each tick: take the newest record, send what the rule asks for.

        ``force``: a snapshot of whatever is unsent. Returns False when the rate held it back.
        """
        if self._closed and not force:
            return True
        # Two locks: ``_lock`` guards the state (add and add_many take it, briefly); ``_send_lock``
        # keeps this source's save-then-send in order (a flush and a tick never swap two snapshots),
        # so that add never waits for the state file's synced write.
        with self._send_lock:
            saved: bytes | None = None
            with self._lock:
                if view is not None:
                    self._state.see(view)
                message = None
                allowed = self._bucket.take(now_ms)  # the aggregator's rate: a later tick sends a newer state
                if allowed:
                    message = self._state.next_message(now_ms, force=force)
                    if message is None:
                        self._bucket.tokens += 1.0  # nothing sent: the token stays
                if self._file is not None and (
                    isinstance(message, SourceSnapshot)
                    or (self._state.n != self._saved_n and now_ms - self._last_save_ms >= self._save_every_ms)
                ):
                    saved = self._state.to_bytes()
                    self._saved_n, self._last_save_ms = self._state.n, now_ms
            if saved is not None and self._file is not None:
                # Saved before it is sent: the file's sequence number is never behind what went out.
                self._file.save(saved)
            if isinstance(message, SourceSnapshot):
                sender.send(source_key(self.name), message.to_bytes())
            elif message is not None:
                sender.send(source_progress_key(self.name), message.to_bytes())
        return allowed

    def flush(self, timeout_s: float = 10.0) -> None:
        """Send a snapshot of everything added so far, and wait until it is delivered.

        Waits for the aggregator's rate first (at most ``1 / source_messages_per_s``
        after a burst): a snapshot over it would be refused, and nothing would resend it.
        """
        deadline = time.monotonic() + timeout_s
        while not self.serve(int(time.time() * 1000), None, self._sender, force=True):
            if time.monotonic() > deadline:
                raise SourceError(f"source {self.name}: no send allowed by source_messages_per_s in {timeout_s:g} s")
            time.sleep(0.02)
        left = self._sender.flush(max(deadline - time.monotonic(), 0.1))
        if left:
            raise SourceError(
                f"source {self.name}: {left} messages not delivered to {self.settings.topic_sketches} after "
                f"{timeout_s:g} s (is the broker at {self.settings.kafka_bootstrap_servers} reachable?)"
            )

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is unsent, wait for delivery, save the state and stop (idempotent).

        Raises :class:`SourceError` if the last snapshot was not delivered in
        ``timeout_s`` (with a state file, the next run sends it).
        """
        if self._closed:
            return
        try:
            self.flush(timeout_s)
        finally:
            self._closed = True
            self._sender.unregister(self)
            if self._own_sender:
                self._sender.close(timeout_s)
            if self._file is not None:
                with self._send_lock:
                    with self._lock:
                        final = self._state.to_bytes()
                    self._file.save(final)
                self._file.close()

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """:meth:`close` for asyncio code (runs it in a thread, so the event loop goes on)."""
        await asyncio.to_thread(self.close, timeout_s)

    async def aflush(self, timeout_s: float = 10.0) -> None:
        """:meth:`flush` for asyncio code."""
        await asyncio.to_thread(self.flush, timeout_s)

    def __enter__(self) -> SketchingSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
