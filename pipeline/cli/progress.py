"""One progress bar for every long command: rate and ETA on a terminal, silence when piped."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["RateColumn", "progress_bar"]

logger = logging.getLogger(__name__)


class RateColumn(ProgressColumn):
    """Items per second, from rich's moving estimate (the final rate once finished)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self._unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self._unit}/s" if speed else "", style="progress.data.speed")


def progress_bar(console: Console, unit: str, *, quiet: bool = False) -> Progress:
    """A bar with done/total, percent, rate and ETA; disabled when ``console`` is not a
    terminal (so piped output stays clean for scripts) or when ``quiet``."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(unit),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    )
