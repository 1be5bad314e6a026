"""The long commands' progress bar: rate and ETA on a terminal, nothing when piped."""

from __future__ import annotations

import io

from rich.console import Console

from pipeline.cli.progress import progress_bar


def _run(terminal: bool, quiet: bool = False) -> str:
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=terminal, width=120)
    with progress_bar(console, "msg", quiet=quiet) as progress:
        task = progress.add_task("producing", total=1000)
        for _ in range(10):
            progress.advance(task, 100)
        progress.refresh()
    return sink.getvalue()


def test_on_a_terminal_the_bar_shows_count_percent_and_rate() -> None:
    shown = _run(terminal=True)
    assert "producing" in shown
    assert "1000/1000" in shown
    assert "100%" in shown
    assert "msg/s" in shown


def test_piped_or_quiet_it_prints_nothing() -> None:
    assert _run(terminal=False) == ""
    assert _run(terminal=True, quiet=True) == ""
