"""The HTTP API's pure answers: parsing q, bodies from a record or a sketch, shards, health, OpenAPI."""

from __future__ import annotations

import math

import datasketches
import numpy as np
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from schemathesis.core.result import Err

from pipeline.core.api_answers import (
    MAX_QUANTILES,
    ApiError,
    WorkerCondition,
    health_answer,
    median_answer,
    newest_record,
    parse_quantiles,
    quantiles_from_record,
    quantiles_from_sketch,
    record_quantiles,
)
from pipeline.core.api_schema import openapi_document
from pipeline.core.exact import check_rank
from pipeline.core.sketch import QuantileBand
from pipeline.core.wire import MedianRecord, QuantileEstimate
from tests.unit.test_shard_listing import openapi_validator

DEFAULT = (0.5, 0.9, 0.99)
TS = 1_700_000_000_000


def _record(ts: int = TS, theta: float | None = 0.005) -> MedianRecord:
    return MedianRecord(
        n=1000,
        shards=4,
        median=QuantileBand(10.0, 9.0, 11.0),
        rank_error=0.0133,
        quantiles=(
            QuantileEstimate(0.5, QuantileBand(10.0, 9.0, 11.0), 0.0183),
            QuantileEstimate(0.9, QuantileBand(20.0, 19.0, 21.0), 0.0183),
        ),
        ts=ts,
        rejected=2,
        theta=theta,
        pending=7,
        stale_shards=1,
        sources=3,
        stale_sources=2,
    )


def _error(raw: list[str]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_quantiles(raw, DEFAULT)
    return caught.value


def test_no_q_means_the_configured_quantiles() -> None:
    assert parse_quantiles([], DEFAULT) == DEFAULT


def test_q_lists_and_repeats_keep_order_and_drop_duplicates() -> None:
    assert parse_quantiles(["0.9, 0.5", "0.99", "0.5", "1", "0", "1e-3"], DEFAULT) == (0.9, 0.5, 0.99, 1.0, 0.0, 0.001)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (["1.5"], "'1.5' is outside [0, 1]"),
        (["-0.1"], "'-0.1' is outside [0, 1]"),
        (["abc"], "'abc' is not a number"),
        (["0.5,abc"], "q value #2 'abc' is not a number"),
        (["nan"], "'nan' is not a finite number"),
        (["inf"], "'inf' is not a finite number"),
        (["1e999"], "'1e999' is not a finite number"),
        ([""], "q value #1 is empty"),
        (["0.5,,0.9"], "q value #2 is empty"),
        (["0." + "1" * 100], "is too long"),
    ],
)
def test_bad_q_is_a_400_naming_the_value(raw: list[str], says: str) -> None:
    error = _error(raw)
    assert error.status == 400
    assert says in error.message
    assert error.body() == {"status": 400, "error": error.message}


def test_too_many_quantiles_is_refused_before_parsing_any() -> None:
    error = _error([",".join(["0.5"] * 10_000)])
    assert error.status == 400
    assert error.message == f"too many quantiles: 10000 given, at most {MAX_QUANTILES} per request"
    assert len(parse_quantiles([",".join(["0.5"] * MAX_QUANTILES)], DEFAULT)) == 1


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=5))
def test_any_text_is_parsed_or_refused_with_a_400(raw: list[str]) -> None:
    refused: ApiError | None = None
    qs: tuple[float, ...] = ()
    try:
        qs = parse_quantiles(raw, DEFAULT)
    except ApiError as exc:
        refused = exc
    if refused is not None:
        assert refused.status == 400
        assert refused.message
    else:
        assert all(0.0 <= q <= 1.0 and math.isfinite(q) for q in qs)


def test_newest_record_by_time() -> None:
    old, new = _record(TS), _record(TS + 5)
    assert newest_record(None, None) is None
    assert newest_record(old, None) is old
    assert newest_record(old, new) is new
    assert newest_record(new, old) is new


def test_median_answer_states_interval_bound_and_facts() -> None:
    body = median_answer(_record(), TS + 1500)
    assert body["median"] == {"value": 10.0, "lower": 9.0, "upper": 11.0}
    assert body["rank_bound"] == pytest.approx(0.0183)
    assert (body["n"], body["shards"], body["ts"], body["age_s"]) == (1000, 4, TS, 1.5)
    assert body["time"] == "2023-11-14T22:13:20.000Z"
    assert (body["source"], body["bound_covers"], body["pending"], body["stale_shards"]) == ("record", "ingested", 7, 1)
    assert (body["sources"], body["stale_sources"]) == (3, 2)
    assert median_answer(_record(theta=None), TS)["bound_covers"] == "reflected"


def test_quantiles_from_record_only_when_it_carries_every_q() -> None:
    record = _record()
    body = quantiles_from_record(record, (0.9, 0.5), TS)
    assert body is not None
    assert [row["q"] for row in body["quantiles"]] == [0.9, 0.5]
    assert body["quantiles"][0] == {"q": 0.9, "value": 20.0, "lower": 19.0, "upper": 21.0, "rank_bound": 0.0183}
    assert quantiles_from_record(record, (0.5, 0.37), TS) is None
    assert record_quantiles(record) == (0.5, 0.9)


def test_quantiles_from_sketch_bound_the_exact_quantile() -> None:
    data = np.random.default_rng(3).lognormal(size=200_000)
    sketch = datasketches.kll_doubles_sketch(200)
    sketch.update(data)
    qs = (0.0, 0.01, 0.37, 0.5, 0.999, 1.0)
    body = quantiles_from_sketch(
        sketch, qs, n=data.size, shards=1, sources=2, pending=5, stale_shards=0, stale_sources=1, now_ms=TS
    )
    error = float(sketch.normalized_rank_error(False))
    assert (body["source"], body["bound_covers"], body["rank_error"], body["ts"]) == (
        "merged_sketch",
        "reflected",
        error,
        TS,
    )
    assert (body["shards"], body["sources"], body["pending"], body["stale_shards"], body["stale_sources"]) == (
        1, 2, 5, 0, 1
    )  # fmt: skip
    ordered = np.sort(data)
    for row in body["quantiles"]:
        assert row["rank_bound"] == error
        exact = check_rank(ordered, row["q"], row["value"]).exact
        assert row["lower"] <= exact <= row["upper"], row
        assert check_rank(ordered, row["q"], row["value"]).within(error)


def test_an_empty_sketch_answers_null_values() -> None:
    sketch = datasketches.kll_doubles_sketch(200)
    body = quantiles_from_sketch(
        sketch, (0.5,), n=0, shards=0, sources=1, pending=0, stale_shards=0, stale_sources=0, now_ms=TS
    )
    assert body["quantiles"][0] | {"rank_bound": 0} == {
        "q": 0.5,
        "value": None,
        "lower": None,
        "upper": None,
        "rank_bound": 0,
    }


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"started": False}, "the worker is starting"),
        ({"rebalancing": True}, "the consumer group is rebalancing"),
        ({"recovering": True}, "restoring the shards' state from the changelog"),
        ({"restored": False}, "rebuilding its state"),
        ({"restored": False, "hosted": False}, None),
    ],
)
def test_health_is_ready_only_with_the_aggregator_restored(changes: dict[str, bool], reason: str | None) -> None:
    values = {"started": True, "rebalancing": False, "recovering": False, "hosted": True, "restored": True}
    condition = WorkerCondition(**(values | changes), owned=(0, 1), record_ts=TS)
    status, body = health_answer(condition, TS + 2000)
    assert status == (200 if reason is None else 503)
    assert body["ready"] is (reason is None)
    assert (reason is None and body["reason"] is None) or (reason is not None and reason in body["reason"])
    assert body["shards_owned"] == [0, 1]
    assert body["estimate_age_s"] == 2.0


def test_openapi_document_loads_in_schemathesis_with_every_endpoint() -> None:
    document = openapi_document()
    assert document is not openapi_document()  # a fresh copy per call
    schema = schemathesis.openapi.from_dict(document)
    labels: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # an operation the loader could not read
        labels.append(result.ok().label)
    assert sorted(labels) == [
        "GET /health",
        "GET /median",
        "GET /metrics",
        "GET /openapi.json",
        "GET /quantiles",
        "GET /shards",
        "GET /stats",
    ]
    q = document["paths"]["/quantiles"]["get"]["parameters"][0]
    assert q["schema"]["maxItems"] == MAX_QUANTILES
    for path in ("/median", "/quantiles"):
        assert "503" in document["paths"][path]["get"]["responses"]


def test_median_and_quantile_answers_fit_the_openapi_schema() -> None:
    median, quantiles = openapi_validator("MedianAnswer"), openapi_validator("QuantilesAnswer")
    record = _record()
    median.validate(median_answer(record, TS + 10))
    from_record = quantiles_from_record(record, (0.5, 0.9), TS + 10)
    assert from_record is not None
    quantiles.validate(from_record)
    sketch = datasketches.kll_doubles_sketch(200)
    sketch.update(np.arange(100.0))
    from_sketch = quantiles_from_sketch(
        sketch, (0.1, 0.5), n=100, shards=0, sources=1, pending=0, stale_shards=0, stale_sources=0, now_ms=TS
    )
    quantiles.validate(from_sketch)
    for body, validator in ((median_answer(record, TS), median), (from_sketch, quantiles)):
        for field in ("sources", "stale_sources"):
            without = {key: value for key, value in body.items() if key != field}
            assert not validator.is_valid(without), field
            assert not validator.is_valid(body | {field: -1}), field
