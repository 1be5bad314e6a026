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
from pipeline.core.shard_listing import distribution, worst
from pipeline.core.wire import MedianRecord, quantile_key
from pipeline.errors import EmptyTopicError
from pipeline.kafka.clients import require_topics
from pipeline.kafka.follow import follow_medians
from pipeline.kafka.sketches_log import SketchesLog, read_sketches_log

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
    require_topics(settings, "medians")
    deadline = time.monotonic() + timeout if timeout else math.inf
    previous: MedianRecord | None = None
    live = None if json_lines else Live(console=out, auto_refresh=False)
    try:
        if live is not None:
            live.start()
        for record in follow_medians(settings, from_beginning, strict=True):
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


WORST_SHARDS = 10
"""Shards ``dmedian shards`` lists without ``--all``: the stale ones first, then the oldest snapshots."""


def _edge_line(log: SketchesLog, now_ms: int, stale_after_ms: int) -> str:
    # Stale as the aggregator counts it: its ledger, read from the topic, says when each was last heard from.
    count, stale = len(log.sources), len(log.book.stale(now_ms, stale_after_ms))
    numbers = sum(snapshot.n for snapshot in log.sources.values())
    return (
        f"{count:,} edge shard{'s' if count != 1 else ''} (sources sending their own sketches), {stale:,} stale "
        f"(silent > {stale_after_ms / 1000:.0f} s), n = {numbers:,}: dmedian sources list shows each"
    )


def shards(
    json_lines: bool = typer.Option(False, "--json", help="One JSON line per shard, every shard."),
    show_all: bool = typer.Option(False, "--all", help="List every shard, not the summary and the worst 10."),
) -> None:
    """A summary of the shards from the sketches topic (counts, stale, distributions, the worst 10); --all: each.

    A line says how many edge shards (sources sending their own sketches) it holds too.
    """
    settings = settings_or_exit()
    require_topics(settings, "sketches")
    log = read_sketches_log(settings, timeout_s=30.0)
    latest = log.snapshots
    if not latest and not log.sources:
        raise EmptyTopicError(f"no snapshots on {settings.topic_sketches!r} yet: is a worker running, with input?")
    now = time.time() * 1000
    if not json_lines and log.sources:
        out.print(_edge_line(log, int(now), 2 * settings.heartbeat_ms), soft_wrap=True)
    if not latest:
        return  # edge shards only
    if json_lines:
        for shard in sorted(latest):
            s = latest[shard]
            row = {"shard": shard, "n": s.n, "median": s.median.value, "lower": s.median.lower,
                   "upper": s.median.upper, "rank_error": s.rank_error, "last_offset": s.last_offset,
                   "rejected": s.rejected, "ts": s.ts}  # fmt: skip
            typer.echo(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        return
    # A shard is stale when neither a snapshot nor a heartbeat came for two heartbeats (as the aggregator says).
    stale_after_ms = 2 * settings.heartbeat_ms
    heard = {shard: max(s.ts, log.progress[shard].ts if shard in log.progress else 0) for shard, s in latest.items()}
    stale = {shard for shard, ts in heard.items() if now - ts > stale_after_ms}
    if show_all:
        listed = sorted(latest)
    else:
        listed = worst(latest, WORST_SHARDS, lambda shard: (shard in stale, now - latest[shard].ts, -shard))
        n_dist = distribution([s.n for s in latest.values()], integer=True)
        age_dist = distribution([(now - s.ts) / 1000 for s in latest.values()])
        summary = Table("across the shards", "min", "median", "p90", "max", title=(
            f"{len(latest):,} shards, {len(stale):,} stale (silent > {stale_after_ms / 1000:.0f} s), "
            f"n = {sum(s.n for s in latest.values()):,}"))  # fmt: skip
        for label, dist, cell in [("numbers per shard", n_dist, "{:,.0f}"), ("snapshot age", age_dist, "{:.1f} s")]:
            assert dist is not None  # latest is not empty
            summary.add_row(label, *(cell.format(dist[key]) for key in ("min", "p50", "p90", "max")))
        out.print(summary)
    title = None if show_all else f"the {len(listed)} worst: stale first, then the oldest snapshot (--all: every shard)"
    table = Table("shard", "n", "median", "lower", "upper", "rank error", "last offset", "rejected", "age", "status",
                  title=title)  # fmt: skip
    for shard in listed:
        s = latest[shard]
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
            "[red]stale[/]" if shard in stale else "live",
        )
    out.print(table)
