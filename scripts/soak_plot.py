"""The soak run's picture: lag, worker RSS, and produced against the served ``n``, over time, kills marked."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Sample", "plot_soak"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One observation of the soak run (numbers, not messages, throughout)."""

    t: float
    """Seconds since the stream started."""
    produced: int
    """Numbers acknowledged by the broker."""
    n: int
    """``n`` of the latest ``medians`` record (0 before the first)."""
    pending: int
    """That record's ``pending``: ingested by shards but not yet in ``n``."""
    group_lag: int
    """High watermarks minus the workers' committed offsets, in numbers."""
    expired: int
    """Numbers deleted by retention before the group committed past them."""
    rss_mb: tuple[float, ...]
    """RSS of each worker slot (NaN while one is down)."""
    kills: int

    @property
    def served_lag(self) -> int:
        return self.produced - self.n


def plot_soak(
    samples: Sequence[Sample], kill_times: Sequence[float], stopped_at: float | None, title: str, path: Path
) -> None:
    """Three panels sharing the time axis; a dotted vertical line at every kill, a grey one where producing stopped."""
    import matplotlib  # noqa: PLC0415 - only this step needs it, and it is the bench extra

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt  # noqa: PLC0415

    minutes = [s.t / 60 for s in samples]
    fig, (lag_ax, rss_ax, n_ax) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    lag_ax.plot(minutes, [s.group_lag / 1e6 for s in samples], label="group lag (committed offsets)")
    lag_ax.plot(minutes, [s.served_lag / 1e6 for s in samples], label="produced − record n", alpha=0.8)
    lag_ax.set_ylabel("lag (M numbers)")
    lag_ax.legend(loc="upper left", fontsize="small")
    slots = len(samples[0].rss_mb) if samples else 0
    for slot in range(slots):
        rss_ax.plot(minutes, [s.rss_mb[slot] for s in samples], label=f"worker {slot}")
    rss_ax.set_ylabel("RSS (MB)")
    rss_ax.legend(loc="upper left", fontsize="small")
    n_ax.plot(minutes, [s.produced / 1e6 for s in samples], label="produced (acked)")
    n_ax.plot(minutes, [s.n / 1e6 for s in samples], label="record n", linestyle="--")
    n_ax.set_ylabel("M numbers")
    n_ax.set_xlabel("minutes")
    n_ax.legend(loc="upper left", fontsize="small")
    for ax in (lag_ax, rss_ax, n_ax):
        ax.grid(alpha=0.3)
        for i, kill in enumerate(kill_times):
            ax.axvline(kill / 60, color="red", linestyle=":", linewidth=1, label="SIGKILL" if i == 0 else None)
        if stopped_at is not None:
            ax.axvline(stopped_at / 60, color="grey", linestyle="--", linewidth=1, label="producer stopped")
    lag_ax.legend(loc="upper left", fontsize="small")  # again, to include the kill line
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
