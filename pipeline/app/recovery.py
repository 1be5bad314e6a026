"""Faust's table recovery with an O(1) "anything left to restore?" check.

The only change is :meth:`need_recovery` (see ``pipeline/core/recovery_progress.py``
for why and for the proof that it answers as Faust's does). Installed per app by
:func:`use_counting_recovery`, before the app starts.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.tables.recovery import Recovery
from faust.types import TP, AppT

from pipeline.core.recovery_progress import RemainingCheck

__all__ = ["CountingRecovery", "use_counting_recovery"]

logger = logging.getLogger(__name__)


class CountingRecovery(Recovery):
    """Faust's :class:`~faust.tables.recovery.Recovery`; ``need_recovery`` costs O(1) per changelog record."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._remaining_check: RemainingCheck[TP] = RemainingCheck()

    def need_recovery(self) -> bool:
        """Whether any active changelog partition still has records to restore."""
        return self._remaining_check.any_remaining(self.active_highwaters, self.active_offsets)


def use_counting_recovery(app: AppT) -> None:
    """Give ``app``'s table manager a :class:`CountingRecovery` (before it makes Faust's own, on first use)."""
    tables: Any = app.tables
    tables._recovery = CountingRecovery(app, tables, beacon=tables.beacon, loop=tables.loop)
