"""Edge shards from the shell: ``dmedian source``, ``dmedian sources``, ``dmedian ingest-sketch``."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TextIO

import datasketches
import typer
from rich import box
from rich.table import Table

from config import Settings
from pipeline.cli.common import fail, out, say, settings_or_exit
from pipeline.core.snapshot_checks import kll_layout
from pipeline.core.source_contract import accept_source, check_source_name, source_key, source_progress_key
from pipeline.core.source_wire import SourceSnapshot
from pipeline.core.wire import SnapshotError
from pipeline.kafka.clients import producer, require_topics
from pipeline.kafka.sketches_log import read_sketches_log, source_policy
from pipeline.source import SketchingSource, SourceError
from pipeline.source.sketching import check_source_id
from pipeline.source.state_file import StateFileError

__all__ = ["ingest_sketch", "source", "sources_cli"]

logger = logging.getLogger(__name__)

sources_cli = typer.Typer(help="The edge shards on the sketches topic: list or retire them.", no_args_is_help=True)


def _tokens(handle: TextIO) -> Iterator[str]:
    for line in handle:
        yield from line.replace(",", " ").split()


def source(
    source_id: str = typer.Option(..., "--id", help="The source id ([A-Za-z0-9_-], and source_id_pattern)."),
    file: Path = typer.Argument(Path("-"), help="Numbers, whitespace or comma separated ('-': stdin)."),
    state: Path | None = typer.Option(
        None, "--state", help="A state file (RocksDB directory): a restarted source resumes its sketch from it."
    ),
    timeout_s: float = typer.Option(
        30.0, "--timeout", min=0.1, help="Seconds to wait for the last snapshot's delivery."
    ),
) -> None:
    """Sketch numbers here and send snapshots to the sketches topic as an edge shard.

    Reads until end of input, then sends what is unsent and waits for its delivery.
    Without --state, this run is an edge shard of its own (<id>@<run token>).
    """
    settings = settings_or_exit()
    if str(file) != "-" and not file.is_file():
        fail(f"{file} is not a readable file (use '-' or no argument for stdin)")
    try:
        check_source_id(source_id, settings)  # a bad id is said before any wait for Kafka
        require_topics(settings, "sketches")
        sketching = SketchingSource(source_id, settings, state_path=state)
    except (SourceError, StateFileError) as exc:
        fail(str(exc))
    # SIGTERM closes cleanly, as end of input does (kill -9 is what a state file is for).
    signal.signal(signal.SIGTERM, _raise_interrupt)
    say(f"source {sketching.name}: sending snapshots to {settings.topic_sketches} (n={sketching.n} resumed)")
    refused = 0
    try:
        with sys.stdin if str(file) == "-" else file.open() as handle:
            for token in _tokens(handle):
                try:
                    sketching.add(float(token))
                except ValueError:
                    sketching.reject()  # counted in the record's `rejected`, as a shard counts bad input
                    refused += 1
                    if refused <= 5:
                        say(f"source {sketching.name}: {token[:40]!r} is not a number: counted as rejected")
    except KeyboardInterrupt:
        say(f"source {sketching.name}: interrupted; sending what is unsent")
    finally:
        _close(sketching, timeout_s)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _close(sketching: SketchingSource, timeout_s: float) -> None:
    try:
        sketching.close(timeout_s)
    except SourceError as exc:
        fail(str(exc), code=1)
    say(f"source {sketching.name}: n={sketching.n}, rejected={sketching.rejected}, last snapshot {sketching.seq}")


@sources_cli.command("retire")
def retire(
    names: list[str] = typer.Argument(..., help="Edge shard names, as `dmedian sources list` shows them."),
) -> None:
    """Retire edge shards: a tombstone each, so their numbers leave the estimate."""
    settings = settings_or_exit()
    require_topics(settings, "sketches")
    for name in names:
        try:
            check_source_name(name, settings.source_id_pattern)
        except SnapshotError as exc:
            fail(exc.detail)
    client = producer(settings, message_timeout_ms=settings.kafka_timeout_ms)
    for name in names:
        client.produce(settings.topic_sketches, value=None, key=source_key(name))
        client.produce(settings.topic_sketches, value=None, key=source_progress_key(name))
    left = client.flush(settings.kafka_timeout_s)
    if left:
        fail(f"{left} tombstones not delivered to {settings.topic_sketches} in {settings.kafka_timeout_s:g} s", code=1)
    say(f"retired {len(names)} edge shard(s): {', '.join(names)}")


@sources_cli.command("list")
def list_sources() -> None:
    """The edge shards the sketches topic holds: name, n, last snapshot, age."""
    settings = settings_or_exit()
    require_topics(settings, "sketches")
    log = read_sketches_log(settings, timeout_s=settings.kafka_timeout_s)
    now_ms = int(time.time() * 1000)
    table = Table("source", "n", "snapshot", "median", "age (s)", box=box.SIMPLE)
    for name, snapshot in sorted(log.sources.items()):
        table.add_row(name, f"{snapshot.n:,}", str(snapshot.seq), f"{snapshot.median.value:.6g}",
                      f"{(now_ms - snapshot.ts) / 1000:.1f}")  # fmt: skip
    out.print(table)
    say(f"{len(log.sources)} edge shard(s), {sum(s.n for s in log.sources.values()):,} numbers")


def ingest_sketch(
    source_id: str = typer.Option(..., "--source-id", help="The edge shard to add the sketch as."),
    file: Path = typer.Argument(..., help="A serialized DataSketches KLL doubles sketch (Java, C++ or Python)."),
    seq: int = typer.Option(
        0, "--seq", min=0, help="Its sequence number (0: the time now in ms, so a later ingest wins)."
    ),
) -> None:
    """Add a KLL doubles sketch built elsewhere as an edge shard (it replaces that source's previous sketch)."""
    settings = settings_or_exit()
    try:
        check_source_id(source_id, settings)
    except SourceError as exc:
        fail(str(exc))
    data = _read_sketch(file)
    snapshot = _snapshot_of(source_id, data, seq or int(time.time() * 1000), settings)
    require_topics(settings, "sketches")
    client = producer(settings, message_timeout_ms=settings.kafka_timeout_ms)
    client.produce(settings.topic_sketches, value=snapshot.to_bytes(), key=source_key(source_id))
    if client.flush(settings.kafka_timeout_s):
        fail(f"the sketch was not delivered to {settings.topic_sketches} in {settings.kafka_timeout_s:g} s", code=1)
    say(f"ingested {file} as source {source_id}: n={snapshot.n}, k={snapshot.k}, snapshot {snapshot.seq}")


def _read_sketch(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")


def _snapshot_of(source_id: str, data: bytes, seq: int, settings: Settings) -> SourceSnapshot:
    """The sketch as an edge shard's snapshot, checked as the aggregator will check it (one line if not)."""
    try:
        kll_layout(data)  # before the C++ deserializer, which trusts the stated sizes
        sketch = datasketches.kll_doubles_sketch.deserialize(data)
    except SnapshotError as exc:
        fail(f"{source_id}: not a KLL doubles sketch: {exc.detail}")
    except Exception as exc:  # untrusted bytes: whatever the deserializer raises
        fail(f"{source_id}: not a KLL doubles sketch: {exc}")
    snapshot = SourceSnapshot.of_sketch(source_id, seq, sketch, int(time.time() * 1000))
    # The standard serialization of the same sketch (Java leaves level 0 unsorted; this library reads it
    # as is, and sends its own form), checked by the aggregator's own rules before it leaves.
    try:
        accept_source(source_key(source_id), snapshot.to_bytes(), source_policy(settings))
    except SnapshotError as exc:
        fail(f"{source_id}: the aggregator would refuse this sketch: {exc.reason}: {exc.detail}")
    return snapshot
