"""``/shards`` paging, filtering, sorting and summary, and ``dmedian shards``, against a real worker.

Shard p gets (p + 1) * 500 numbers, so every order by count, and the summary's
distribution, are known exactly. Edge shards (sources that send their own sketches)
are listed beside them, on the aggregator's worker.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from pipeline.kafka.generate import Distribution, MessageFormat, generate
from pipeline.source import SketchingSource
from tests.integration.harness import Deployment

pytestmark = pytest.mark.integration

PARTITIONS = 24
BATCH = 500


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _shards(base: str, query: str = "") -> dict[str, Any]:
    status, body = _get(f"{base}/shards?{query}")
    assert status == 200, (query, body)
    return dict(body)


def test_shards_pages_sorts_filters_and_summarises_every_shard(deploy: Callable[..., Deployment]) -> None:
    deployment = deploy(PARTITIONS)
    worker = deployment.worker()
    base = f"http://127.0.0.1:{worker.web_port}"
    # Partition p gets p + 1 float64 blocks of BATCH numbers.
    targets = [p for p in range(PARTITIONS) for _ in range(p + 1)]
    values = generate(Distribution.UNIFORM, len(targets) * BATCH, seed=4)
    deployment.produce(values, MessageFormat.FLOAT64, BATCH, partition=lambda seq: targets[seq - 1])
    deployment.wait_for_n(values.size)

    # Every shard's snapshot reaches the aggregator, and the consumer catches up with the input.
    deadline = time.monotonic() + 60
    while True:
        body = _shards(base, f"limit={PARTITIONS}")
        summary = body["summary"]
        settled = summary["shards"] == PARTITIONS and summary["n_total"] == values.size and summary["lag_total"] == 0
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert body["complete"] is True, body
    counts = [(p + 1) * BATCH for p in range(PARTITIONS)]
    assert summary == {
        "shards": PARTITIONS,
        "owned_here": PARTITIONS,
        "stale": 0,
        "unknown": 0,
        "n_total": values.size,
        # Nearest rank: the 12th and the 22nd of 24 counts.
        "n": {"min": BATCH, "p50": 12 * BATCH, "p90": 22 * BATCH, "max": PARTITIONS * BATCH},
        "age_s": summary["age_s"],
        "lag_total": 0,
    }, deployment.worker_logs()
    ages = summary["age_s"]
    assert 0 <= ages["min"] <= ages["p50"] <= ages["p90"] <= ages["max"] < 600, ages
    assert [row["n"] for row in body["shards"]] == counts
    assert all(row["lag"] == 0 and row["status"] == "live" for row in body["shards"]), body["shards"]
    assert all(row["last_offset"] == row["shard"] for row in body["shards"])  # p + 1 messages: offsets 0..p

    # Paging by id: each shard once, in order, the next page's offset given until the last.
    seen: list[int] = []
    offset: int | None = 0  # None once the last page is read
    pages = 0
    while offset is not None:
        page = _shards(base, f"limit=5&offset={offset}")
        assert (page["total"], page["limit"], page["offset"]) == (PARTITIONS, 5, offset)
        seen += [row["shard"] for row in page["shards"]]
        offset, pages = page["next_offset"], pages + 1
    assert (seen, pages) == (list(range(PARTITIONS)), 5)

    by_count = _shards(base, "sort=n")
    assert (by_count["sort"], by_count["order"]) == ("n", "desc")
    assert [row["shard"] for row in by_count["shards"]] == list(range(PARTITIONS - 1, -1, -1))
    smallest = _shards(base, "sort=n&order=asc&limit=3&offset=2")
    assert [(row["shard"], row["n"]) for row in smallest["shards"]] == [(2, 3 * BATCH), (3, 4 * BATCH), (4, 5 * BATCH)]
    assert smallest["next_offset"] == 5

    oldest = _shards(base, "sort=age&limit=10")["shards"]
    assert len(oldest) == 10
    ages_shown = [row["last_snapshot_age_s"] for row in oldest]
    assert ages_shown == sorted(ages_shown, reverse=True), ages_shown
    for row in oldest:
        assert row["median"]["lower"] <= row["median"]["value"] <= row["median"]["upper"], row

    only_stale = _shards(base, "stale=true")
    assert (only_stale["total"], only_stale["shards"], only_stale["summary"]["shards"]) == (0, [], PARTITIONS)
    assert _shards(base, "stale=false&limit=1")["total"] == PARTITIONS
    summary_only = _shards(base, "limit=0")
    assert (summary_only["shards"], summary_only["total"], summary_only["next_offset"]) == ([], PARTITIONS, 0)

    for query, says in [
        ("limit=abc", "limit 'abc' is not a whole number"),
        ("limit=5000", "limit '5000' is outside [0, 1000]"),
        ("offset=-2", "offset '-2' is outside >= 0"),
        ("sort=median", "sort 'median' is not one of shard, age, n, lag"),
        ("stale=maybe", "stale 'maybe' is not true or false"),
        ("order=sideways", "order 'sideways' is not asc or desc"),
    ]:
        status, error = _get(f"{base}/shards?{query}")
        assert (status, error["status"]) == (400, 400), (query, error)
        assert says in error["error"], (query, error)

    _cli_summarises_and_lists_every_shard_with_all(deployment, values.size)


def _cli_summarises_and_lists_every_shard_with_all(deployment: Deployment, total: int) -> None:
    deployment.env["COLUMNS"] = "200"  # rich's table width off a terminal
    summary = deployment.cli("shards")
    assert summary.returncode == 0, summary.stderr
    assert f"{PARTITIONS} shards, 0 stale" in summary.stdout, summary.stdout
    assert f"n = {total:,}" in summary.stdout, summary.stdout
    assert "the 10 worst" in summary.stdout, summary.stdout
    assert summary.stdout.count(" live ") == 10, summary.stdout
    assert f"│ {BATCH:,} " in summary.stdout, summary.stdout  # the least count
    assert f"│ {PARTITIONS * BATCH:,} " in summary.stdout, summary.stdout  # the greatest

    every = deployment.cli("shards", "--all")
    assert every.returncode == 0, every.stderr
    assert every.stdout.count(" live ") == PARTITIONS, every.stdout
    assert "worst" not in every.stdout

    lines = deployment.cli("shards", "--json")
    assert lines.returncode == 0, lines.stderr
    rows = [orjson.loads(line) for line in lines.stdout.splitlines()]
    assert [row["shard"] for row in rows] == list(range(PARTITIONS))
    assert [row["n"] for row in rows] == [(p + 1) * BATCH for p in range(PARTITIONS)]
    assert sum(row["n"] for row in rows) == total


def test_edge_shards_alone_in_shards_median_quantiles_and_the_cli(deploy: Callable[..., Deployment]) -> None:
    # Heartbeats every 2 s: a source that stops is stale 4 s later.
    deployment = deploy(2, heartbeat_ms="2000")
    settings = deployment.settings
    worker = deployment.worker()
    base = f"http://127.0.0.1:{worker.web_port}"
    busy_values = generate(Distribution.UNIFORM, 4000, seed=5)
    quiet_values = generate(Distribution.UNIFORM, 1000, seed=6)
    with SketchingSource("quiet", settings) as quiet:
        quiet.add_many(quiet_values)
    # Closed: it sends nothing more, and goes stale; "busy" stays open, heartbeating.
    with SketchingSource("busy", settings) as busy:
        busy.add_many(busy_values)
        busy.flush()
        total = busy_values.size + quiet_values.size
        deployment.wait_for_n(total)

        status, median = _get(f"{base}/median")
        assert status == 200, median
        assert (median["source"], median["n"], median["shards"], median["sources"]) == ("record", total, 0, 2), median
        # A q no record carries: from the merged sketch, though no partition shard has a number.
        status, other = _get(f"{base}/quantiles?q=0.37")
        assert status == 200, other
        assert (other["source"], other["n"], other["shards"], other["sources"]) == ("merged_sketch", total, 0, 2)

        deadline = time.monotonic() + 30
        while (body := _shards(base))["sources"]["summary"]["stale"] < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        edge = body["sources"]
        assert edge["summary"] == {"count": 2, "stale": 1, "n_total": total, "pending": 0}, edge
        # Stale first, then the longest unheard.
        assert [(row["name"], row["status"], row["n"]) for row in edge["rows"]] == [
            (quiet.name, "stale", quiet_values.size), (busy.name, "live", busy_values.size)
        ], edge  # fmt: skip
        assert edge["rows"][0]["heard_age_s"] > settings.heartbeat_ms * 2 / 1000 > edge["rows"][1]["heard_age_s"]
        assert body["summary"]["n_total"] == 0, body  # the partition shards (owned here) have no number
        assert [row["name"] for row in _shards(base, "limit=1")["sources"]["rows"]] == [quiet.name]
        assert _get(f"{base}/quantiles?q=0.37")[1]["stale_sources"] == 1

        # The command reads the sketches topic: edge shards only, so a line about them and no shard table.
        result = deployment.cli("shards")
        assert result.returncode == 0, result.stderr
        said = f"2 edge shards (sources sending their own sketches), 1 stale (silent > 4 s), n = {total:,}"
        assert said in result.stdout, result.stdout
        assert "the 10 worst" not in result.stdout, result.stdout
        lines = deployment.cli("shards", "--json")
        assert (lines.returncode, lines.stdout) == (0, ""), lines  # one line per partition shard: none
