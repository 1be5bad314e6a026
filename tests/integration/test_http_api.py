"""The worker's HTTP API on a real broker: answers against the produced data, bad parameters, schemathesis.

One deployment for the module (a worker start costs seconds): the tests read it, and
the second worker joins last. Beside the partition shards, one edge shard (a source
that sends its own sketch) stays open for the whole module, so every answer, the
fuzzed ones included, carries edge shards.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err

from pipeline.core.api_schema import openapi_document
from pipeline.core.exact import check_rank
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from pipeline.source import SketchingSource
from tests.broker_fixture import BrokerHandle
from tests.integration.harness import Deployment, WorkerProcess

pytestmark = pytest.mark.integration

PARTITIONS = 4
COUNT = 60_000
"""Numbers on the input topic (the partition shards')."""
EDGE_COUNT = 15_000
"""Numbers of the edge shard."""
TOTAL = COUNT + EDGE_COUNT


@dataclass
class Running:
    deployment: Deployment
    worker: WorkerProcess
    values: npt.NDArray[np.float64]
    """Every number: the partition shards' and the edge shard's."""
    source: SketchingSource

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.worker.web_port}"


def _get(url: str, timeout_s: float = 10.0) -> tuple[int, str, Any]:
    """(status, content type, body: JSON when it is JSON, else text) of a GET; 4xx and 5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status, ctype, raw = response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        status, ctype, raw = exc.code, exc.headers.get("Content-Type", ""), exc.read()
    body = json.loads(raw) if ctype.startswith("application/json") else raw.decode()
    return status, ctype, body


def _wait(what: str, probe: Callable[[], bool], timeout_s: float, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except OSError:
            pass  # the web server is not up yet
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout_s} s\n{logs()}")


@pytest.fixture(scope="module")
def running(kafka: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    deployment = Deployment(kafka.bootstrap, Path(tmp_path_factory.mktemp("http-api")), PARTITIONS)
    source: SketchingSource | None = None
    try:
        worker = deployment.worker("host")
        values = generate(Distribution.LOGNORMAL, COUNT, seed=11)
        deployment.produce(values, MessageFormat.FLOAT64, 500)
        # Open for the module: its heartbeats keep it live.
        source = SketchingSource("http-edge", deployment.settings)
        edge_values = generate(Distribution.NORMAL, EDGE_COUNT, seed=12)
        source.add_many(edge_values)
        source.flush()
        deployment.wait_for_n(TOTAL, timeout_s=180)
        running = Running(deployment, worker, np.concatenate([values, edge_values]), source)
        _wait("ready", lambda: _get(f"{running.base}/health")[0] == 200, 60, deployment.worker_logs)
        yield running
    finally:
        if source is not None:
            source.close()
        deployment.close()


def _inside(values: npt.NDArray[np.float64], q: float, row: dict[str, Any]) -> None:
    ordered = np.sort(values)
    check = check_rank(ordered, q, row["value"])
    assert row["lower"] <= check.exact <= row["upper"], (q, row, check)
    assert check.within(row["rank_bound"]), (q, row, check)


def test_median_quantiles_shards_and_health_agree_with_the_data(running: Running) -> None:
    base, values = running.base, running.values

    status, _, median = _get(f"{base}/median")
    assert status == 200, median
    assert (median["source"], median["n"], median["shards"]) == ("record", TOTAL, PARTITIONS)
    assert (median["sources"], median["stale_sources"], median["stale_shards"]) == (1, 0, 0), median
    assert median["rank_bound"] == pytest.approx(median["rank_error"] + median["theta"])
    assert median["bound_covers"] == "ingested"
    assert 0 <= median["age_s"] < 600
    assert median["time"].endswith("Z")
    _inside(values, 0.5, median["median"] | {"rank_bound": median["rank_bound"]})

    status, _, carried = _get(f"{base}/quantiles?q=0.5,0.9,0.99")
    assert status == 200, carried
    assert carried["source"] == "record"
    assert (carried["n"], carried["sources"]) == (TOTAL, 1)
    assert [row["q"] for row in carried["quantiles"]] == [0.5, 0.9, 0.99]
    for row in carried["quantiles"]:
        _inside(values, row["q"], row)

    # Quantiles no record carries: from the merged sketch, on the aggregator's worker.
    status, _, other = _get(f"{base}/quantiles?q=0.37&q=0.01,1")
    assert status == 200, other
    assert (other["source"], other["bound_covers"], other["n"]) == ("merged_sketch", "reflected", TOTAL)
    assert (other["shards"], other["sources"], other["stale_shards"], other["stale_sources"]) == (PARTITIONS, 1, 0, 0)
    assert [row["q"] for row in other["quantiles"]] == [0.37, 0.01, 1.0]
    for row in other["quantiles"]:
        assert row["rank_bound"] == other["rank_error"]
        _inside(values, row["q"], row)

    status, _, shards = _get(f"{base}/shards")
    assert status == 200
    assert shards["complete"] is True
    assert [s["shard"] for s in shards["shards"]] == list(range(PARTITIONS))
    assert (shards["total"], shards["next_offset"], shards["summary"]["n_total"]) == (PARTITIONS, None, COUNT)
    assert sum(s["n"] for s in shards["shards"]) == COUNT
    for shard in shards["shards"]:
        assert (shard["owned_here"], shard["status"]) == (True, "live"), shard
        assert shard["snapshots_sent"] >= 1, shard
        assert shard["snapshot_bytes_sent"] > 1000, shard
        assert 0 <= shard["last_snapshot_age_s"] < 600
        assert shard["median"]["lower"] <= shard["median"]["value"] <= shard["median"]["upper"]
    # The edge shard: beside the partition shards, not among them.
    edge = shards["sources"]
    assert edge["complete"] is True, edge
    assert edge["summary"] == {"count": 1, "stale": 0, "n_total": EDGE_COUNT, "pending": 0}, edge
    [row] = edge["rows"]
    assert (row["name"], row["n"], row["seq"], row["status"]) == (running.source.name, EDGE_COUNT, running.source.seq,
                                                                  "live"), row  # fmt: skip
    assert (row["k"], row["rejected"]) == (running.deployment.settings.sketch_k, 0), row
    assert 0 <= row["heard_age_s"] <= row["last_snapshot_age_s"] + 1 < 600, row
    _inside(running.values[COUNT:], 0.5, row["median"] | {"rank_bound": 0.02})
    assert _get(f"{base}/shards?limit=0")[2]["sources"]["rows"] == []

    status, _, health = _get(f"{base}/health")
    assert status == 200
    assert (health["ready"], health["aggregator_hosted"], health["aggregator_restored"]) == (True, True, True), health
    assert health["shards_owned"] == list(range(PARTITIONS))


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("q=1.5", "q value #1 '1.5' is outside [0, 1]"),
        ("q=abc", "q value #1 'abc' is not a number"),
        ("q=0.5,-1", "q value #2 '-1' is outside [0, 1]"),
        ("q=nan", "is not a finite number"),
        ("q=", "q value #1 is empty"),
        ("q=" + ",".join(["0.5"] * 2000), "too many quantiles: 2000 given, at most 1000 per request"),
    ],
)
def test_bad_quantiles_are_a_400_with_a_clear_message(running: Running, query: str, says: str) -> None:
    status, ctype, body = _get(f"{running.base}/quantiles?{query}")
    assert (status, ctype.split(";")[0]) == (400, "application/json"), body
    assert says in body["error"], body
    assert body["status"] == 400


def test_ten_thousand_quantiles_are_a_400_with_a_clear_message(running: Running) -> None:
    status, _, body = _get(f"{running.base}/quantiles?q=" + ",".join(["0.5"] * 10_000))
    assert status == 400, body
    assert body["error"] == "too many quantiles: 10000 given, at most 1000 per request"


def test_a_request_line_past_the_servers_limit_is_still_a_400(running: Running) -> None:
    status, _, body = _get(f"{running.base}/quantiles?q=" + ",".join(["0.5"] * 20_000))  # 80 KB
    assert status == 400, body
    assert "Got more than 65536 bytes" in str(body)


def _fuzz(operation: Any, mode: GenerationMode, examples: int, checks: list[Any], base: str) -> int:
    """Call the live worker with ``examples`` generated cases of one operation; return how many ran."""
    calls = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Any) -> None:
        nonlocal calls
        case.call_and_validate(base_url=base, checks=checks, timeout=10)
        calls += 1

    call()
    return calls


def test_schemathesis_finds_no_server_error_and_every_answer_fits_the_schema(running: Running) -> None:
    schema = schemathesis.openapi.from_url(f"{running.base}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    tried: dict[str, int] = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # an operation the loader could not read
        operation = result.ok()
        if operation.path == "/quantiles":
            tried["quantiles positive"] = _fuzz(operation, GenerationMode.POSITIVE, 60, checks, running.base)
            negative = [*checks, negative_data_rejection]
            tried["quantiles negative"] = _fuzz(operation, GenerationMode.NEGATIVE, 60, negative, running.base)
        else:
            tried[operation.label] = _fuzz(operation, GenerationMode.POSITIVE, 3, checks, running.base)
    assert tried["quantiles positive"] >= 10, tried
    assert tried["quantiles negative"] >= 10, tried
    # Loaded from a URL, schemathesis leaves out the operation that served the schema;
    # that document is compared whole with the module's below.
    every = {"GET /median", "GET /shards", "GET /health", "GET /metrics", "GET /stats"}
    assert every <= set(tried), tried
    assert _get(f"{running.base}/openapi.json")[2] == openapi_document()
    assert all(calls >= 1 for calls in tried.values()), tried


def test_a_worker_without_the_aggregator_answers_from_the_record_and_names_the_host(running: Running) -> None:
    deployment = running.deployment
    other = deployment.worker("other")
    other_base = f"http://127.0.0.1:{other.web_port}"

    def owns_shards() -> bool:
        status, _, health = _get(f"{other_base}/health")
        return status == 200 and bool(health["shards_owned"]) and health["has_estimate"]

    _wait("second worker ready with shards", owns_shards, 120, deployment.worker_logs)
    _, _, host_health = _get(f"{running.base}/health")
    _, _, other_health = _get(f"{other_base}/health")
    assert host_health["aggregator_hosted"] != other_health["aggregator_hosted"], (host_health, other_health)
    host, guest = (running.base, other_base) if host_health["aggregator_hosted"] else (other_base, running.base)
    _wait("host ready again", lambda: _get(f"{host}/health")[0] == 200, 60, deployment.worker_logs)

    status, _, median = _get(f"{guest}/median")
    assert (status, median["source"], median["n"], median["sources"]) == (200, "record", TOTAL, 1), median
    _inside(running.values, 0.5, median["median"] | {"rank_bound": median["rank_bound"]})

    status, _, refused = _get(f"{guest}/quantiles?q=0.37")
    assert status == 409, refused
    assert "only the aggregator's worker holds" in refused["error"]
    assert refused["aggregator_url"] is not None, refused
    assert refused["aggregator_url"].rstrip("/") == host, refused

    status, _, shards = _get(f"{guest}/shards")
    assert status == 200
    assert shards["complete"] is False
    # Only the aggregator's worker knows each edge shard.
    assert shards["sources"] == {"complete": False, "summary": None, "rows": []}, shards
    _, _, guest_health = _get(f"{guest}/health")
    assert {s["shard"] for s in shards["shards"]} == set(guest_health["shards_owned"]), (shards, guest_health)
    summary = shards["summary"]
    assert summary["shards"] == summary["owned_here"] == len(guest_health["shards_owned"]), shards
    # The guest knows its own shards' counts, not every shard's: its total is a part of COUNT.
    assert summary["n_total"] == sum(s["n"] for s in shards["shards"]) <= COUNT, shards
