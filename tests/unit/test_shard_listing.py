"""``/shards`` at any shard count: parameters, filtering, paging, ordering, the summary; the worst-N pick."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import jsonschema_rs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.api_answers import ApiError
from pipeline.core.api_schema import openapi_document
from pipeline.core.shard_listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ShardQuery,
    ShardRow,
    distribution,
    histogram,
    parse_shard_query,
    select_page,
    shards_answer,
    shards_summary,
    worst,
    worst_first,
)
from pipeline.core.sketch import QuantileBand
from pipeline.core.source_listing import SourceRow, sources_answer, sources_unknown

NOW = 1_700_000_000_000
BAND = QuantileBand(1.0, 0.5, 1.5)


def _row(shard: int, n: int | None = 10, age_s: float | None = 1.0, stale: bool | None = False,
         lag: int | None = None) -> ShardRow:  # fmt: skip
    ts = None if age_s is None else NOW - int(age_s * 1000)
    return ShardRow(shard, lag is not None, n, BAND, ts, stale, None, None, lag, 5, 0)


def _many(count: int, seed: int = 3) -> list[ShardRow]:
    rng = random.Random(seed)
    rows = [
        _row(shard, rng.randrange(0, 1000), rng.choice([None, rng.random() * 100]), rng.choice([True, False, None]),
             rng.choice([None, rng.randrange(0, 50)]))
        for shard in range(count)
    ]  # fmt: skip
    rng.shuffle(rows)
    return rows


def _error(params: dict[str, list[str]]) -> str:
    with pytest.raises(ApiError) as caught:
        parse_shard_query(params)
    assert caught.value.status == 400
    return caught.value.message


def test_no_parameters_is_the_first_page_by_shard_id() -> None:
    assert parse_shard_query({}) == ShardQuery(DEFAULT_LIMIT, 0, None, "shard", "asc")


def test_parameters_are_read_and_order_defaults_to_the_worst_first() -> None:
    query = parse_shard_query({"limit": ["5"], "offset": ["10"], "stale": ["true"], "sort": ["age"]})
    assert query == ShardQuery(5, 10, True, "age", "desc")
    assert parse_shard_query({"sort": ["lag"], "order": ["asc"], "stale": ["False"]}).order == "asc"
    assert parse_shard_query({"stale": ["False"]}).stale is False
    assert parse_shard_query({"limit": ["0"]}).limit == 0
    assert parse_shard_query({"limit": [str(MAX_LIMIT)]}).limit == MAX_LIMIT


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"limit": ["abc"]}, f"limit 'abc' is not a whole number [0, {MAX_LIMIT}]"),
        ({"limit": ["-1"]}, f"limit '-1' is outside [0, {MAX_LIMIT}]"),
        ({"limit": [str(MAX_LIMIT + 1)]}, f"limit '{MAX_LIMIT + 1}' is outside [0, {MAX_LIMIT}]"),
        ({"limit": ["1.5"]}, "limit '1.5' is not a whole number"),
        ({"limit": [""]}, "limit '' is not a whole number"),
        ({"offset": ["-3"]}, "offset '-3' is outside >= 0"),
        ({"offset": ["9" * 100]}, "offset '99999"),
        ({"stale": ["yes"]}, "stale 'yes' is not true or false"),
        ({"sort": ["median"]}, "sort 'median' is not one of shard, age, n, lag"),
        ({"order": ["up"]}, "order 'up' is not asc or desc"),
        ({"limit": ["1", "2"]}, "limit is given 2 times; give it once"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_value(params: dict[str, list[str]], says: str) -> None:
    assert says in _error(params)


def test_a_long_value_is_cut_in_the_message() -> None:
    message = _error({"offset": ["9" * 100]})
    assert "too long" in message
    assert len(message) < 120


def test_pages_cover_every_row_once_in_order() -> None:
    rows = _many(1000)
    seen: list[int] = []
    offset: int | None = 0
    while offset is not None:
        page = select_page(rows, ShardQuery(limit=64, offset=offset))
        assert page.total == 1000
        seen.extend(row.shard for row in page.rows)
        offset = page.next_offset
    assert seen == list(range(1000))


def test_the_last_page_has_no_next_and_past_the_end_is_empty() -> None:
    rows = [_row(shard) for shard in range(10)]
    last = select_page(rows, ShardQuery(limit=4, offset=8))
    assert ([r.shard for r in last.rows], last.next_offset) == ([8, 9], None)
    exact = select_page(rows, ShardQuery(limit=5, offset=5))
    assert ([r.shard for r in exact.rows], exact.next_offset) == ([5, 6, 7, 8, 9], None)
    beyond = select_page(rows, ShardQuery(limit=4, offset=50))
    assert (beyond.rows, beyond.total, beyond.next_offset) == ([], 10, None)
    assert select_page(rows, ShardQuery(limit=0)).rows == []


def _expected(rows: list[ShardRow], query: ShardQuery) -> list[int]:
    """The page by a full sort (what the heap must give): missing values last, ties by shard id."""
    by_sort: dict[str, Callable[[ShardRow], int | None]] = {
        "shard": lambda r: r.shard,
        "n": lambda r: r.n,
        "lag": lambda r: r.lag,
        "age": lambda r: None if r.last_snapshot_ms is None else NOW - r.last_snapshot_ms,
    }
    values = by_sort[query.sort]
    matching = [r for r in rows if query.stale is None or (r.stale is True) == query.stale]
    present = sorted((r for r in matching if values(r) is not None), key=lambda r: r.shard)

    def present_value(row: ShardRow) -> int:
        value = values(row)
        assert value is not None  # kept in present for it
        return value

    present.sort(key=present_value, reverse=query.order == "desc")  # stable: ties stay by shard id
    absent = sorted((r for r in matching if values(r) is None), key=lambda r: r.shard)
    return [r.shard for r in [*present, *absent]][query.offset : query.offset + query.limit]


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(0, 300),
    limit=st.integers(0, 60),
    offset=st.integers(0, 320),
    stale=st.sampled_from([None, True, False]),
    sort=st.sampled_from(["shard", "age", "n", "lag"]),
    order=st.sampled_from(["asc", "desc"]),
    seed=st.integers(0, 1000),
)
def test_every_page_is_the_slice_of_the_full_sort(
    count: int, limit: int, offset: int, stale: bool | None, sort: Any, order: Any, seed: int
) -> None:
    rows = _many(count, seed)
    query = ShardQuery(limit, offset, stale, sort, order)
    page = select_page(rows, query)
    assert [r.shard for r in page.rows] == _expected(rows, query)
    matching = sum(1 for r in rows if stale is None or (r.stale is True) == stale)
    assert page.total == matching
    assert page.next_offset == (offset + limit if offset + limit < matching else None)


def test_stale_filter_keeps_only_stale_or_only_the_others() -> None:
    rows = [_row(0, stale=True), _row(1, stale=False), _row(2, stale=None), _row(3, stale=True)]
    assert [r.shard for r in select_page(rows, ShardQuery(stale=True)).rows] == [0, 3]
    assert [r.shard for r in select_page(rows, ShardQuery(stale=False)).rows] == [1, 2]


def test_oldest_snapshot_first_and_shards_without_one_last() -> None:
    rows = [_row(0, age_s=5), _row(1, age_s=None), _row(2, age_s=50), _row(3, age_s=0.5)]
    desc = select_page(rows, ShardQuery(sort="age", order="desc")).rows
    assert [r.shard for r in desc] == [2, 0, 3, 1]
    asc = select_page(rows, ShardQuery(sort="age", order="asc")).rows
    assert [r.shard for r in asc] == [3, 0, 2, 1]


def test_distribution_is_nearest_rank_over_the_values() -> None:
    assert distribution([]) is None
    assert distribution([7]) == {"min": 7.0, "p50": 7.0, "p90": 7.0, "max": 7.0}
    values = list(range(1, 101))  # 1..100
    random.Random(1).shuffle(values)
    assert distribution(values, integer=True) == {"min": 1, "p50": 50, "p90": 90, "max": 100}
    assert distribution([3.5, 1.0, 2.0]) == {"min": 1.0, "p50": 2.0, "p90": 3.5, "max": 3.5}


def test_summary_counts_every_row_whatever_the_filter() -> None:
    rows = [_row(0, n=10, age_s=2, stale=True, lag=4), _row(1, n=None, age_s=None, stale=None),
            _row(2, n=30, age_s=8, stale=False, lag=0), _row(3, n=20, age_s=4, stale=False)]  # fmt: skip
    summary = shards_summary(rows, NOW)
    assert summary == {
        "shards": 4,
        "owned_here": 2,
        "stale": 1,
        "unknown": 1,
        "n_total": 60,
        "n": {"min": 10, "p50": 20, "p90": 30, "max": 30},
        "age_s": {"min": 2.0, "p50": 4.0, "p90": 8.0, "max": 8.0},
        "lag_total": 4,
    }
    empty = shards_summary([], NOW)
    assert (empty["shards"], empty["n"], empty["age_s"], empty["lag_total"]) == (0, None, None, None)


def test_worst_takes_the_n_largest_and_all_or_none() -> None:
    items = list(range(100))
    random.Random(5).shuffle(items)
    assert worst(items, 3, lambda x: x) == [99, 98, 97]
    assert worst(items, 0, lambda x: x) == []
    assert worst(items, -1, lambda x: x) == list(range(99, -1, -1))
    assert worst(items, 500, lambda x: x) == list(range(99, -1, -1))


def test_worst_first_ranks_stale_then_age_then_lag() -> None:
    rows = [_row(0, age_s=100, stale=False), _row(1, age_s=1, stale=True), _row(2, age_s=None, lag=9),
            _row(3, age_s=100, stale=False, lag=3), _row(4, age_s=50)]  # fmt: skip
    assert [r.shard for r in worst(rows, 4, worst_first(NOW))] == [1, 3, 0, 4]


def test_histogram_bins_span_the_values() -> None:
    assert histogram([], 5) == []
    bins = histogram([0, 1, 2, 3, 4, 10], 5)
    assert [b["count"] for b in bins] == [2, 2, 1, 0, 1]
    assert (bins[0]["lo"], bins[-1]["hi"]) == (0.0, 10.0)
    assert sum(b["count"] for b in histogram(list(np.arange(10_000.0)), 12)) == 10_000


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 to JSON Schema, enough for this document: nullable, and refs to $defs."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if "$ref" in out:
        out["$ref"] = out["$ref"].replace("#/components/schemas/", "#/$defs/")
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    return out


def openapi_validator(component: str) -> Any:
    """A JSON Schema validator of one of the OpenAPI document's schemas (the API's answers are checked with it)."""
    schemas = openapi_document()["components"]["schemas"]
    schema = _json_schema(schemas[component])
    schema["$defs"] = _json_schema(schemas)
    return jsonschema_rs.validator_for(schema)


def test_answers_fit_the_openapi_schema_exactly() -> None:
    validator = openapi_validator("ShardsAnswer")
    rows = [*_many(300), ShardRow(300, True, 0, None, None, None, 0, 0, 0, -1, 0)]
    for query in [ShardQuery(), ShardQuery(limit=0), ShardQuery(MAX_LIMIT, 0, True, "age", "desc"),
                  ShardQuery(7, 90, False, "lag", "asc")]:  # fmt: skip
        body = shards_answer(rows, select_page(rows, query), query, now_ms=NOW, complete=True, stale_after_ms=20_000)
        assert len(body["shards"]) == min(query.limit, body["total"] - query.offset) > 0 or query.limit == 0
        validator.validate(body)
    empty = shards_answer([], select_page([], ShardQuery()), ShardQuery(), now_ms=NOW, complete=False,
                          stale_after_ms=20_000)  # fmt: skip
    validator.validate(empty)
    body["shards"][0]["status"] = "asleep"
    assert not validator.is_valid(body)

    # On the aggregator's worker, the edge shards: a summary and rows (elsewhere: not known, as in `empty`).
    assert empty["sources"] == sources_unknown()
    stale_row = SourceRow("web-1@k3x9", 10, 2, BAND, NOW - 30_000, NOW - 30_000, True, 0, 200)
    heartbeats_only = SourceRow("quiet", None, 0, None, None, NOW - 40_000, True, None, None)
    source_list = [stale_row, heartbeats_only, SourceRow("batch", 0, 1, BAND, NOW, NOW, False, 0, 200)]
    sources = sources_answer(source_list, 100, now_ms=NOW, pending=4)
    body = shards_answer(rows, select_page(rows, ShardQuery()), ShardQuery(), now_ms=NOW, complete=True,
                         stale_after_ms=20_000, sources=sources)  # fmt: skip
    validator.validate(body)
    assert [row["name"] for row in body["sources"]["rows"]] == ["quiet", "web-1@k3x9", "batch"]
    body["sources"]["rows"][0]["status"] = "unknown"  # an edge shard is live or stale, never unknown
    assert not validator.is_valid(body)
    del body["sources"]["rows"][0]
    validator.validate(body)
    del body["sources"]["summary"]["pending"]
    assert not validator.is_valid(body)


def test_answer_rows_name_status_age_and_median() -> None:
    rows = [ShardRow(3, True, 10, BAND, NOW - 2000, False, 2, 5000, 7, 99, 1),
            ShardRow(1, False, 5, None, None, None, None, None)]  # fmt: skip
    query = ShardQuery()
    body = shards_answer(rows, select_page(rows, query), query, now_ms=NOW, complete=True, stale_after_ms=20_000)
    assert [s["shard"] for s in body["shards"]] == [1, 3]
    assert [s["status"] for s in body["shards"]] == ["unknown", "live"]
    assert body["shards"][1] | {} == {
        "shard": 3, "owned_here": True, "n": 10, "median": {"value": 1.0, "lower": 0.5, "upper": 1.5},
        "last_snapshot_age_s": 2.0, "status": "live", "snapshots_sent": 2, "snapshot_bytes_sent": 5000, "lag": 7,
        "last_offset": 99, "rejected": 1,
    }  # fmt: skip
    assert (body["complete"], body["stale_after_s"], body["total"], body["next_offset"]) == (True, 20.0, 2, None)
    assert (body["limit"], body["offset"], body["sort"], body["order"]) == (DEFAULT_LIMIT, 0, "shard", "asc")
