"""``dmedian verify``: the served estimate against the exact quantiles of exactly what it covers."""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from typing import Any

import orjson
import typer
from rich import box
from rich.table import Table

from config import Settings
from pipeline.cli.common import console, out, settings_or_exit
from pipeline.cli.progress import progress_bar
from pipeline.core.audit import (
    AuditError,
    AuditOptions,
    AuditResult,
    EstimateAudit,
    QuantileAudit,
    ServedEstimate,
    ServedQuantile,
    ShardClaim,
    run_audit,
    sketch_hints,
)
from pipeline.core.merge import GlobalEstimator
from pipeline.core.wire import MedianRecord, SketchSnapshot, quantile_key
from pipeline.errors import ExitCode
from pipeline.kafka.audit_reader import KafkaChunkSource, ReaderOptions, latest_median_record, plan_ranges
from pipeline.kafka.clients import require_topics
from pipeline.kafka.follow import latest_snapshots

__all__ = ["verify"]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _estimate(label: str, source: str, record: MedianRecord) -> ServedEstimate:
    bands = {0.5: record.median} | {e.q: e.band for e in record.quantiles}
    quantiles = tuple(ServedQuantile(q, band) for q, band in sorted(bands.items()))
    return ServedEstimate(label, source, record.n, record.rank_error, quantiles)


def _claim(snapshot: SketchSnapshot) -> ShardClaim:
    return ShardClaim(
        snapshot.shard,
        snapshot.n,
        snapshot.rejected,
        snapshot.min,
        snapshot.max,
        snapshot.median.value,
        snapshot.rank_error,
        snapshot.last_offset,
    )


def _relation(record: MedianRecord | None, estimator: GlobalEstimator) -> str:
    if record is None:
        return "missing"
    if (record.n, record.shards) == (estimator.n, estimator.shard_count):
        return "matches"
    return "older" if record.n < estimator.n else "newer" if record.n > estimator.n else "differs"


def _read_settled(settings: Settings, settle_s: float) -> tuple[dict[int, SketchSnapshot], MedianRecord | None]:
    """Snapshots and the latest record, re-read for up to ``settle_s`` until the record covers the snapshots."""
    deadline = time.monotonic() + settle_s
    while True:
        snapshots = latest_snapshots(settings)
        record = latest_median_record(settings)
        covered = sum(s.n for s in snapshots.values())
        if record is None and not snapshots:
            return snapshots, record
        if (record is not None and (record.n, record.shards) == (covered, len(snapshots))) or (
            time.monotonic() >= deadline
        ):
            return snapshots, record
        time.sleep(1.0)


def _num(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def _report(result: AuditResult, record: MedianRecord | None, relation: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "n": result.n,
        "record": {
            "relation": relation,
            "n": record.n if record else None,
            "shards": record.shards if record else None,
            "ts": record.ts if record else None,
        },
        "estimates": [
            {
                "label": e.estimate.label,
                "source": e.estimate.source,
                "n": e.estimate.n,
                "rank_error_bound": e.estimate.rank_error,
                "ok": e.ok,
                "quantiles": [
                    {
                        "q": a.q,
                        "served": _num(a.band.value),
                        "lower": _num(a.band.lower),
                        "upper": _num(a.band.upper),
                        "exact": a.exact,
                        "below": a.below,
                        "at_or_below": a.at_or_below,
                        "rank_low": a.rank_low,
                        "rank_high": a.rank_high,
                        "rank_error": _num(a.rank_error),
                        "bound": a.bound,
                        "inside": a.inside,
                        "band_holds": a.band_holds,
                    }
                    for a in e.quantiles
                ],
            }
            for e in result.estimates
        ],
        "shards": [
            {
                "shard": s.claim.shard,
                "last_offset": s.claim.last_offset,
                "n_snapshot": s.claim.n,
                "n_input": s.counted,
                "rejected_snapshot": s.claim.rejected,
                "rejected_input": s.rejected,
                "min": _num(s.min),
                "max": _num(s.max),
                "median": _num(s.claim.median),
                "median_rank_error": _num(s.median_rank_error),
                "median_bound": s.claim.rank_error,
                "ok": not s.problems,
                "problems": list(s.problems),
            }
            for s in result.shards
        ],
        "passes": result.passes,
        "peak_window_values": result.peak_window_values,
    } | extra


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.6g}"


def _rank(audit: QuantileAudit) -> str:
    # A number that occurs once has one rank (shown as the end of its 1/n-wide interval
    # nearest q, so that rank - q is the error); a repeated one spans an interval.
    if audit.at_or_below - audit.below <= 1:
        return f"{min(max(audit.q, audit.rank_low), audit.rank_high):.5f}"
    return f"{audit.rank_low:.5f}-{audit.rank_high:.5f}"


def _estimate_table(audit: EstimateAudit) -> Table:
    e = audit.estimate
    headers = ("q", "served", "lower", "upper", "exact", "served's\nexact rank", "rank\nerror", "bound",
               "inside?")  # fmt: skip
    table = Table(
        *headers, title=f"{e.label}: {e.source}, n={e.n:,}", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    for a in audit.quantiles:
        verdict = ("yes" if a.inside else "[bold red]NO[/]") + ("" if a.band_holds else " [bold red]exact off band[/]")
        cells = (_fmt(a.band.value), _fmt(a.band.lower), _fmt(a.band.upper), _fmt(a.exact))
        rank, error = _rank(a), f"{a.rank_error:.5f}"
        table.add_row(quantile_key(a.q), *cells, rank, error, f"{a.bound:.4f}", verdict)
    return table


def _shard_table(result: AuditResult) -> Table:
    headers = ("shard", "last\noffset", "n\nsnapshot", "n\ninput", "rejected\nsnap./input",
               "local median\nrank error", "check")  # fmt: skip
    table = Table(
        *headers,
        title="each shard's snapshot against its input",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for s in result.shards:
        check = "ok" if not s.problems else "[bold red]" + "; ".join(s.problems) + "[/]"
        median = f"{s.median_rank_error:.5f} ≤ {s.claim.rank_error:.5f}"
        rejected = f"{s.claim.rejected:,} / {s.rejected:,}"
        table.add_row(str(s.claim.shard), str(s.claim.last_offset), f"{s.claim.n:,}", f"{s.counted:,}", rejected,
                      median, check)  # fmt: skip
    return table


def _give_up(json_out: bool, message: str, code: ExitCode = ExitCode.FAILED) -> typer.Exit:
    if json_out:
        typer.echo(orjson.dumps({"ok": False, "error": message}).decode())
    else:
        console.print(f"[bold red]error:[/] cannot verify: {message}", highlight=False, soft_wrap=True)
    return typer.Exit(int(code))


def verify(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    max_memory_mb: int = typer.Option(
        256, min=32, help="Bound on the data verify holds: read buffers, decoded chunks, selection windows."
    ),
    settle: float = typer.Option(
        5.0, min=0.0, help="Seconds to wait for the latest medians record to cover the latest snapshots."
    ),
) -> None:
    """Audit the served estimate against the exact quantiles of exactly the input it covers.

    Reads the latest snapshot of every shard, re-reads partition p of the input
    topic up to that snapshot's last offset, decoding with the shards' own codec,
    and checks: each shard's count (and rejected count, min, max) against the
    input; the exact rank of every served quantile and whether its rank error is
    within the stated bound; and that the exact quantile lies between the served
    lower and upper values. The medians record is audited when it covers exactly
    the snapshots; the snapshots merged again are audited always.

    Memory: the data verify holds (librdkafka's prefetch queue, a decoded chunk
    with its temporaries, the selection windows) stays within about
    --max-memory-mb, whatever the topic's size; the interpreter and libraries
    add about 80 MB. The output states the peak RSS.

    Exit status: 0 when every count matches and every quantile is inside its
    bound; 1 when anything does not (or the audit cannot be exact, e.g. the
    topic's retention deleted covered records); 2 for bad settings or options;
    6 when there is nothing to audit yet; the others as every command's (README).
    """
    settings = settings_or_exit()
    require_topics(settings, "numbers", "sketches", "medians")
    started = time.monotonic()
    snapshots, record = _read_settled(settings, settle)
    if not snapshots:
        raise _give_up(json_out, f"no snapshots on {settings.topic_sketches!r}: nothing is served yet", ExitCode.EMPTY)
    estimator = GlobalEstimator(settings.sketch_k, settings.quantiles)
    for shard in sorted(snapshots):
        estimator.offer(snapshots[shard])
    relation = _relation(record, estimator)
    remerged = estimator.record(int(time.time() * 1000))
    estimates = [_estimate("re-merged", "the latest snapshots merged again now", remerged)]
    if record is not None and relation == "matches":
        estimates.insert(0, _estimate("served", f"the latest medians record (ts {record.ts})", record))
    ranges = plan_ranges(settings, snapshots)
    lost = [f"shard {r.shard}: {'; '.join(r.problems)}" for r in ranges if not r.exact]
    if lost:
        raise _give_up(json_out, "covered input records were deleted:\n  " + "\n  ".join(lost))
    # The budget's shares: windows of doubles 1/4 (twice that while one is
    # concatenated, after reading); prefetch queue 1/8; raw chunk 1/16, which
    # decoding and counting multiply about fivefold while it is processed.
    budget = max_memory_mb * _MIB
    options = AuditOptions(max_values=budget // 4 // 8)
    reader = ReaderOptions(chunk_bytes=budget // 16, queue_kbytes=budget // 8 // 1024)
    with progress_bar(console, "records", quiet=json_out) as progress:
        tasks: dict[int, Any] = {}

        def advance(pass_number: int, records: int) -> None:
            if pass_number not in tasks:
                what = "counting ranks" if pass_number == 1 else "selecting exact values"
                tasks[pass_number] = progress.add_task(f"pass {pass_number}: {what}", total=source.total_records)
            progress.advance(tasks[pass_number], records)

        source = KafkaChunkSource(settings, ranges, reader, advance)
        hints = sketch_hints(estimator.merged_sketch(), [q.q for q in estimates[0].quantiles], remerged.rank_error)
        try:
            result = run_audit(source, estimates, [_claim(s) for s in snapshots.values()], hints, options)
        except AuditError as exc:
            raise _give_up(json_out, str(exc)) from None
    seconds = time.monotonic() - started
    extra = {
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "max_memory_mb": max_memory_mb,
        "records_read": sum(source.records_read.values()),
    }
    if json_out:
        typer.echo(orjson.dumps(_report(result, record, relation, extra)).decode())
    else:
        _print_tables(result, record, relation, extra)
    raise typer.Exit(0 if result.ok else 1)


def _print_tables(result: AuditResult, record: MedianRecord | None, relation: str, extra: dict[str, Any]) -> None:
    covered = sum(s.claim.n for s in result.shards)
    if record is None:
        out.print("no medians record yet: auditing the snapshots merged again")
    elif record.sources:
        out.print(
            f"the latest medians record also counts {record.sources} edge shard(s) (n={record.n:,} in all), whose "
            "numbers never reached the input topic: it is not audited; the partition shards' snapshots merged "
            "again are"
        )
    elif relation != "matches":
        out.print(
            f"the latest medians record (n={record.n:,}, {record.shards} shards) is {relation} than the "
            f"snapshots (n={covered:,}, {len(result.shards)} shards): it covers other data, so it is not "
            "audited; the snapshots merged again are"
        )
    for audit in result.estimates:
        out.print(_estimate_table(audit))
    out.print(_shard_table(result))
    verdict = "[bold green]OK[/]" if result.ok else "[bold red]FAILED[/]"
    out.print(
        f"{verdict}: {result.n:,} numbers ({extra['records_read']:,} records) in {len(result.shards)} shards, "
        f"{result.passes} passes, {extra['seconds']:.1f} s, peak RSS {extra['peak_rss_mb']:.0f} MB "
        f"(selection windows held at most {result.peak_window_values:,} numbers)"
    )
