"""Producing a stream from a thread, so that tests can move workers meanwhile."""

from __future__ import annotations

import threading
import time

import numpy as np
import numpy.typing as npt

from pipeline.kafka.generate import MessageFormat
from tests.integration.harness import Deployment

__all__ = ["BackgroundStream"]

# Single numbers, float64 blocks and JSON arrays in turn: every decode path sees the faults.
_FORMATS = (MessageFormat.SINGLE, MessageFormat.FLOAT64, MessageFormat.JSON_ARRAY)


class BackgroundStream:
    """Produces ``values`` in ``chunks`` from a thread, alternating formats, pausing between chunks.

    ``single_every`` makes every n-th chunk single-number messages (the slow, per-record
    path); the others are blocks or arrays of ``batch_size`` numbers.
    """

    def __init__(
        self,
        deployment: Deployment,
        values: npt.NDArray[np.float64],
        chunks: int,
        pause_s: float,
        batch_size: int = 250,
        formats: tuple[MessageFormat, ...] = _FORMATS,
    ) -> None:
        self._deployment = deployment
        self._parts = np.array_split(values, chunks)
        self._pause_s = pause_s
        self._batch_size = batch_size
        self._formats = formats
        self.error: BaseException | None = None
        self.chunks_sent = 0
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def _run(self) -> None:
        try:
            for i, part in enumerate(self._parts):
                self._deployment.produce(part, self._formats[i % len(self._formats)], self._batch_size)
                self.chunks_sent += 1
                time.sleep(self._pause_s)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    def start(self) -> BackgroundStream:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the producer did not finish"
        assert self.error is None, f"producing failed: {self.error!r}"
