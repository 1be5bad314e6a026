"""``dmedian produce``: send numbers from a file, stdin or a generator."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import typer

from pipeline.cli.common import console, fail, settings_or_exit
from pipeline.cli.progress import progress_bar
from pipeline.kafka.clients import producer, require_topics
from pipeline.kafka.generate import Distribution, MessageFormat, encode_messages, generate
from pipeline.kafka.produce import ProduceError, produce_values

__all__ = ["produce", "produce_numbers"]

logger = logging.getLogger(__name__)


def produce_numbers(
    values: npt.NDArray[np.float64], fmt: MessageFormat, batch_size: int, rate: float, topic: str | None = None
) -> int:
    """Produce ``values`` to the input topic with a progress bar on a terminal; return messages sent.

    Checks first that the topic exists (a broker may auto-create a missing one with
    one partition). A message not acknowledged within ``kafka_timeout_ms`` fails,
    so a dead broker ends the command, which says how many messages were delivered.
    """
    settings = settings_or_exit()
    if topic is None:
        require_topics(settings, "numbers")
    messages = -(-values.size // batch_size) if fmt is not MessageFormat.SINGLE else values.size
    client = producer(settings, message_timeout_ms=settings.kafka_timeout_ms)
    with progress_bar(console, "msg") as progress:
        task = progress.add_task("producing", total=messages)

        def advance(step: int) -> None:
            progress.advance(task, step)

        try:
            return produce_values(
                client,
                topic or settings.topic_numbers,
                encode_messages(values, fmt, batch_size),
                rate=rate,
                on_progress=advance,
                timeout_s=settings.kafka_timeout_s + 5.0,  # past message.timeout.ms: every message has its report
                total=messages,
            )
        except ProduceError as exc:
            raise exc.for_operator(settings) from exc


def _read_numbers(source: Path) -> Iterator[float]:
    handle = sys.stdin if str(source) == "-" else source.open()
    for line_no, line in enumerate(handle, start=1):
        for token in line.replace(",", " ").split():
            try:
                yield float(token)
            except ValueError:
                fail(f"{source}:{line_no}: {token!r} is not a number")


def produce(
    file: Path | None = typer.Option(
        None, "--file", "-f", help="Numbers, whitespace or comma separated ('-' for stdin)."
    ),
    distribution: Distribution = typer.Option(Distribution.NORMAL, help="Generator distribution (without --file)."),
    count: int = typer.Option(1_000_000, min=1, help="How many numbers to generate."),
    fmt: MessageFormat = typer.Option(MessageFormat.SINGLE, "--format", help="Message encoding."),
    batch_size: int = typer.Option(1000, min=1, help="Numbers per message for json-array and float64."),
    rate: float = typer.Option(0.0, min=0.0, help="Messages per second (0: as fast as possible)."),
    seed: int = typer.Option(0, help="Generator seed."),
    save: Path | None = typer.Option(None, help="Also save the numbers produced as .npy (for exact comparison)."),
) -> None:
    """Produce numbers to the input topic with confluent-kafka."""
    if file is not None:
        values = np.fromiter(_read_numbers(file), dtype=np.float64)
    else:
        values = generate(distribution, count, seed)
    if save is not None:
        np.save(save, values)
    sent = produce_numbers(values, fmt, batch_size, rate)
    console.print(f"produced {values.size:,} numbers in {sent:,} messages")
