"""Binding a table write to the partition of the records it summarises.

Faust routes a table write to the changelog partition of the *current event*
(and the RocksDB store picks its per-partition database the same way). Inside
``take_events`` Faust sets no current event, or the wrong one, so the write for
shard p could land in another changelog partition and be restored by the wrong
worker. We set it explicitly to the last event of the partition being written.

This touches ``faust.streams._current_event``, a private context variable;
``tests/unit/test_faust_internals.py`` fails loudly if a Faust upgrade moves it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from faust.streams import _current_event, current_event
from faust.types import EventT

__all__ = ["bound_to_event"]

logger = logging.getLogger(__name__)


@contextmanager
def bound_to_event(event: EventT[Any]) -> Iterator[None]:
    """Make ``event`` Faust's current event for the duration of the block."""
    token = _current_event.set(weakref.ref(event))
    try:
        assert current_event() is event
        yield
    finally:
        _current_event.reset(token)
