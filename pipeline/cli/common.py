"""What every command shares: settings from the environment, and clean failures."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import typer
from rich.console import Console

from config import ConfigError, Settings, load_settings

__all__ = ["console", "fail", "out", "say", "settings_or_exit"]

logger = logging.getLogger(__name__)

console = Console(stderr=True)
"""Progress and messages go to stderr, so that stdout stays clean for data."""

out = Console()
"""Data and reports (tables, JSON lines) go to stdout."""


def say(message: str) -> None:
    """One line on stderr, unwrapped even when piped: scripts and tests read these lines."""
    console.print(message, soft_wrap=True, highlight=False)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print an error and exit with ``code``."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit(**overrides: Any) -> Settings:
    """Load settings (dropping unset overrides), or exit naming the bad setting."""
    try:
        return load_settings({key: value for key, value in overrides.items() if value is not None})
    except ConfigError as exc:
        fail(str(exc))
