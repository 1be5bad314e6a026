"""``dmedian watch`` and ``dmedian shards``: the global estimate and each shard's own."""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime

import orjson
import typer
from rich.live import Live
from rich.table import Table

from pipeline.cli.common import fail, out, settings_or_exit
from pipeline.core.wire import MedianRecord, quantile_key
from pipeline.kafka.follow import follow_medians, latest_snapshots

__all__ = ["record_table", "shards", "watch"]

logger = logging.getLogger(__name__)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.6g}"


def record_table(record: MedianRecord, rate: float | None = None) -> Table:
    """A record as a rich table."""
    when = datetime.fromtimestamp(record.ts / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
    title = f"n={record.n:,}  shards={record.shards}  rank error=±{record.rank_error:.4%}  at {when} UTC"
    if rate is not None:
        title += f"  ingest {rate:,.0f}/s"
    if record.theta is not None:
        title += f" + budget ±{record.theta:.2%}"
    if record.pending:
        title += f"  pending={record.pending:,}"
    if record.stale_shards:
        title += f"  stale shards={record.stale_shards}"
    if record.rejected:
        title += f"  rejected={record.rejected:,}"
    table = Table("quantile", "value", "lower", "upper", title=title)
    table.add_row("median", _fmt(record.median.value), _fmt(record.median.lower), _fmt(record.median.upper))
    for estimate in record.quantiles:
        band = estimate.band
        table.add_row(quantile_key(estimate.q), _fmt(band.value), _fmt(band.lower), _fmt(band.upper))
    return table


def watch(
    json_lines: bool = typer.Option(False, "--json", help="Print one JSON line per record instead of a table."),
    from_beginning: bool = typer.Option(False, help="Replay every record instead of starting at the latest."),
    until_n: int = typer.Option(0, help="Exit once a record has n >= this (0: run until interrupted)."),
    timeout: float = typer.Option(0.0, help="Exit with status 1 after this many seconds (0: never)."),
) -> None:
    """Follow the medians topic and show the global estimate live."""
    settings = settings_or_exit()
    deadline = time.monotonic() + timeout if timeout else math.inf
    previous: MedianRecord | None = None
    live = None if json_lines else Live(console=out, auto_refresh=False)
    try:
        if live is not None:
            live.start()
        for record in follow_medians(settings, from_beginning):
            if record is not None:
                rate = None
                if previous is not None and record.ts > previous.ts:
                    rate = (record.n - previous.n) * 1000 / (record.ts - previous.ts)
                previous = record
                if live is None:
                    typer.echo(record.to_json().decode())
                else:
                    live.update(record_table(record, rate), refresh=True)
                if until_n and record.n >= until_n:
                    return
            if time.monotonic() > deadline:
                fail(f"timed out after {timeout:.0f} s" + (f" at n={previous.n}" if previous else ""), code=1)
    except KeyboardInterrupt:
        return
    finally:
        if live is not None:
            live.stop()


def shards(json_lines: bool = typer.Option(False, "--json", help="One JSON line per shard.")) -> None:
    """Each shard's n, local median with its bound, and source offset, from the sketches topic."""
    settings = settings_or_exit()
    latest = latest_snapshots(settings)
    if not latest:
        fail("no snapshots on the sketches topic yet", code=1)
    now = time.time() * 1000
    table = Table("shard", "n", "median", "lower", "upper", "rank error", "last offset", "rejected", "age")
    for shard in sorted(latest):
        s = latest[shard]
        if json_lines:
            typer.echo(
                orjson.dumps(
                    {
                        "shard": shard,
                        "n": s.n,
                        "median": s.median.value,
                        "lower": s.median.lower,
                        "upper": s.median.upper,
                        "rank_error": s.rank_error,
                        "last_offset": s.last_offset,
                        "rejected": s.rejected,
                        "ts": s.ts,
                    },
                    option=orjson.OPT_SERIALIZE_NUMPY,
                ).decode()
            )
        table.add_row(
            str(shard),
            f"{s.n:,}",
            _fmt(s.median.value),
            _fmt(s.median.lower),
            _fmt(s.median.upper),
            f"±{s.rank_error:.3%}",
            str(s.last_offset),
            str(s.rejected),
            f"{(now - s.ts) / 1000:.1f}s",
        )
    if not json_lines:
        out.print(table)
