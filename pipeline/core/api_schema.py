"""The OpenAPI 3 document of the worker's HTTP API, as data (served at ``/openapi.json``).

Kept beside :mod:`pipeline.core.api_answers`, whose bodies it describes; the
integration test runs schemathesis against it on a live worker, so a body that
drifts from this document fails there.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.core.api_answers import MAX_QUANTILES
from pipeline.core.shard_listing import DEFAULT_LIMIT, MAX_LIMIT, SORT_KEYS

__all__ = ["API_VERSION", "openapi_document"]

logger = logging.getLogger(__name__)

API_VERSION = "1.0.0"

_JSON = "application/json"


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "nullable": True, **extra}


def _count(description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "description": description}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref(name)}}}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


def _unavailable() -> dict[str, Any]:
    return _error("The worker cannot answer now (it is stopping, or an internal step failed); retry")


def _band() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["value", "lower", "upper"],
        "properties": {
            "value": _nullable("number", description="The estimate (null for an empty sketch)."),
            "lower": _nullable("number", description="The value at rank q - rank_bound (or the exact minimum)."),
            "upper": _nullable("number", description="The value at rank q + rank_bound (or the exact maximum)."),
        },
    }


def _estimate_meta() -> dict[str, Any]:
    return {
        "source": {
            "type": "string",
            "enum": ["record", "merged_sketch"],
            "description": "record: the latest medians record; merged_sketch: the aggregator's merged sketch, now.",
        },
        "n": {"type": "integer", "minimum": 0, "description": "Numbers the estimate reflects (exact)."},
        "shards": {"type": "integer", "minimum": 0, "description": "Partition shards in the estimate."},
        "sources": _count("Edge shards in the estimate (sources that send snapshots of their own sketch)."),
        "ts": {"type": "integer", "description": "Time of the estimate, epoch milliseconds."},
        "time": {"type": "string", "format": "date-time", "description": "The same time, ISO 8601 UTC."},
        "age_s": {"type": "number", "minimum": 0, "description": "Seconds since the estimate was made."},
        "rank_error": {"type": "number", "minimum": 0, "description": "The merged sketch's rank error (99%)."},
        "theta": _nullable("number", description="The shards' emission budget, included in rank_bound."),
        "bound_covers": {
            "type": "string",
            "enum": ["ingested", "reflected"],
            "description": "ingested: the bound holds over every number ingested; reflected: over the n reflected.",
        },
        "pending": {"type": "integer", "minimum": 0, "description": "Numbers ingested that n does not reflect yet."},
        "stale_shards": {"type": "integer", "minimum": 0, "description": "Shards silent for over 2 heartbeats."},
        "stale_sources": _count("Edge shards silent for over 2 heartbeats (they stay in the estimate)."),
    }


_META_REQUIRED = (
    "source", "n", "shards", "sources", "ts", "time", "age_s", "rank_error", "theta", "bound_covers", "pending",
    "stale_shards", "stale_sources",
)  # fmt: skip


_SHARDS_ANSWER_FIELDS = (
    "complete", "ts", "stale_after_s", "summary", "total", "limit", "offset", "next_offset", "sort", "order", "shards",
    "sources",
)  # fmt: skip
_SOURCE_ROW_FIELDS = ("name", "n", "seq", "median", "last_snapshot_age_s", "heard_age_s", "status", "rejected", "k")


def _sources_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": (
            "The edge shards (sources that send their own sketches to the sketches topic): known on the "
            "aggregator's worker only (complete = true); elsewhere complete = false, summary null, no rows."
        ),
        "required": ["complete", "summary", "rows"],
        "properties": {
            "complete": {"type": "boolean", "description": "true on the aggregator's worker."},
            "summary": {
                "type": "object",
                "nullable": True,
                "required": ["count", "stale", "n_total", "pending"],
                "properties": {
                    "count": _count("Edge shards with a snapshot."),
                    "stale": _count("Not heard from for over stale_after_s."),
                    "n_total": _count("Numbers in their snapshots."),
                    "pending": _count("Numbers they said they added that their snapshots do not reflect yet."),
                },
            },
            "rows": {
                "type": "array",
                "maxItems": MAX_LIMIT,
                "description": "The first limit edge shards: stale first, then the longest unheard, then by name.",
                "items": {
                    "type": "object",
                    "required": [*_SOURCE_ROW_FIELDS],
                    "properties": {
                        "name": {"type": "string", "description": "Source id, and @run token without a state file."},
                        "n": _nullable("integer", minimum=0, description="Numbers in its latest snapshot."),
                        "seq": _count("That snapshot's sequence number."),
                        "median": {**_band(), "nullable": True},
                        "last_snapshot_age_s": _nullable(
                            "number", minimum=0, description="Seconds since the snapshot was sent (source's clock)."
                        ),
                        "heard_age_s": _nullable(
                            "number", minimum=0, description="Seconds since the aggregator last heard from it."
                        ),
                        "status": {"type": "string", "enum": ["live", "stale"]},
                        "rejected": _nullable("integer", minimum=0),
                        "k": _nullable("integer", minimum=1, description="Its sketch's KLL k."),
                    },
                },
            },
        },
    }


_SHARD_ROW_FIELDS = (
    "shard", "owned_here", "n", "median", "last_snapshot_age_s", "status", "lag", "last_offset", "rejected"
)  # fmt: skip


def _schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["status", "error"],
            "properties": {
                "status": {"type": "integer", "description": "The HTTP status, repeated."},
                "error": {"type": "string", "description": "What is wrong, for a person to read."},
            },
        },
        "Band": _band(),
        "MedianAnswer": {
            "type": "object",
            "required": [*_META_REQUIRED, "median", "rank_bound"],
            "properties": {
                **_estimate_meta(),
                "rejected": {"type": "integer", "minimum": 0},
                "median": _ref("Band"),
                "rank_bound": {"type": "number", "minimum": 0, "description": "The stated bound on the rank error."},
            },
        },
        "QuantilesAnswer": {
            "type": "object",
            "required": [*_META_REQUIRED, "quantiles"],
            "properties": {
                **_estimate_meta(),
                "rejected": {"type": "integer", "minimum": 0},
                "quantiles": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["q", "value", "lower", "upper", "rank_bound"],
                        "properties": {
                            "q": {"type": "number", "minimum": 0, "maximum": 1},
                            **_band()["properties"],
                            "rank_bound": {"type": "number", "minimum": 0},
                        },
                    },
                },
            },
        },
        "Distribution": {
            "type": "object",
            "nullable": True,
            "description": "Over the shards with a value (nearest rank: each is one shard's value); null: none has.",
            "required": ["min", "p50", "p90", "max"],
            "properties": {name: {"type": "number"} for name in ("min", "p50", "p90", "max")},
        },
        "ShardsSummary": {
            "type": "object",
            "description": "Every shard this worker knows, whatever the page's filter.",
            "required": ["shards", "owned_here", "stale", "unknown", "n_total", "n", "age_s", "lag_total"],
            "properties": {
                "shards": {"type": "integer", "minimum": 0, "description": "Shards known."},
                "owned_here": {"type": "integer", "minimum": 0, "description": "Of them, owned by this worker."},
                "stale": {"type": "integer", "minimum": 0, "description": "Silent for over stale_after_s."},
                "unknown": {"type": "integer", "minimum": 0, "description": "Whose liveness is not known yet."},
                "n_total": {"type": "integer", "minimum": 0, "description": "Numbers in them, summed."},
                "n": _ref("Distribution"),
                "age_s": _ref("Distribution"),
                "lag_total": _nullable("integer", minimum=0, description="Unread input records of owned shards."),
            },
        },
        "ShardsAnswer": {
            "type": "object",
            "required": [*_SHARDS_ANSWER_FIELDS],
            "properties": {
                "complete": {
                    "type": "boolean",
                    "description": "true on the aggregator's worker (every shard with a snapshot); else owned shards.",
                },
                "ts": {"type": "integer"},
                "stale_after_s": {"type": "number"},
                "summary": _ref("ShardsSummary"),
                "total": {"type": "integer", "minimum": 0, "description": "Shards matching the filter."},
                "limit": {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT},
                "offset": {"type": "integer", "minimum": 0},
                "next_offset": _nullable("integer", minimum=0, description="The next page's offset (null: last)."),
                "sort": {"type": "string", "enum": list(SORT_KEYS)},
                "order": {"type": "string", "enum": ["asc", "desc"]},
                "shards": {
                    "type": "array",
                    "maxItems": MAX_LIMIT,
                    "items": {
                        "type": "object",
                        "required": [*_SHARD_ROW_FIELDS],
                        "properties": {
                            "shard": {"type": "integer", "minimum": 0},
                            "owned_here": {"type": "boolean"},
                            "n": _nullable("integer", minimum=0),
                            "median": {**_band(), "nullable": True},
                            "last_snapshot_age_s": _nullable("number", minimum=0),
                            "status": {"type": "string", "enum": ["live", "stale", "unknown"]},
                            "snapshots_sent": _nullable("integer", minimum=0),
                            "snapshot_bytes_sent": _nullable("integer", minimum=0),
                            "lag": _nullable("integer", minimum=0, description="Unread input records (owned only)."),
                            "last_offset": _nullable("integer", minimum=-1),
                            "rejected": _nullable("integer", minimum=0),
                        },
                    },
                },
                "sources": _ref("SourcesListing"),
            },
        },
        "SourcesListing": _sources_schema(),
        "Health": {
            "type": "object",
            "required": ["ready", "reason", "aggregator_hosted", "aggregator_restored", "shards_owned", "has_estimate"],
            "properties": {
                "ready": {"type": "boolean"},
                "reason": _nullable("string", description="Why the worker is not ready (null when it is)."),
                "aggregator_hosted": {"type": "boolean"},
                "aggregator_restored": {"type": "boolean"},
                "shards_owned": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "has_estimate": {"type": "boolean"},
                "estimate_age_s": _nullable("number", minimum=0),
                "ts": {"type": "integer"},
            },
        },
    }


def _q_parameter() -> dict[str, Any]:
    return {
        "name": "q",
        "in": "query",
        "required": False,
        "description": (
            f"Quantiles in [0, 1], comma-separated (q=0.5,0.9,0.99), at most {MAX_QUANTILES}; "
            "may also be repeated (q=0.5&q=0.9). Absent: the configured quantiles."
        ),
        "style": "form",
        "explode": False,
        "schema": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_QUANTILES,
            "items": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }


def _shards_parameters() -> list[dict[str, Any]]:
    def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}

    return [
        query("limit", f"Rows in the page, and edge shards listed (default {DEFAULT_LIMIT}; 0: the summaries only).",
              {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT}),
        query("offset", "Rows to skip: the previous page's next_offset.", {"type": "integer", "minimum": 0}),
        query("stale", "true: stale shards only; false: the others only.", {"type": "boolean"}),
        query("sort", "Order by shard id, snapshot age, count or consumer lag.",
              {"type": "string", "enum": list(SORT_KEYS)}),
        query("order", "asc or desc; default desc for age, n and lag (worst first), asc for shard.",
              {"type": "string", "enum": ["asc", "desc"]}),
    ]  # fmt: skip


def _get(summary: str, description: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "description": description, "responses": responses, **extra}}


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3.0 document (a new dict on every call: callers may change it)."""
    bad_request = {
        "description": (
            "A bad q (not a number, outside [0, 1], empty, or too many). A request line over 64 KiB is "
            "refused by the web server itself, in plain text."
        ),
        "content": {_JSON: {"schema": _ref("Error")}, "text/plain": {"schema": {"type": "string"}}},
    }
    no_estimate = _error("No estimate yet: no medians record has been published or read")
    paths = {
        "/median": _get(
            "The global median",
            "From the latest medians record (any worker), with its interval and stated rank bound.",
            {"200": _json("MedianAnswer", "The median"), "404": no_estimate, "503": _unavailable()},
        ),
        "/quantiles": _get(
            "Any quantiles",
            "Quantiles the records carry come from the latest record, on any worker. Others come from the "
            "merged sketch on the aggregator's worker; another worker answers 409 and names it.",
            {
                "200": _json("QuantilesAnswer", "The quantiles, in the order asked"),
                "400": bad_request,
                "404": no_estimate,
                "409": _error("A q no record carries, asked of a worker that does not host the aggregator"),
                "503": _unavailable(),
            },
            parameters=[_q_parameter()],
        ),
        "/shards": _get(
            "Per-shard state: a summary and one page",
            "Every shard on the aggregator's worker (complete = true), else the shards this worker owns: "
            "a summary of all of them, and one filtered, sorted page of rows. On the aggregator's worker, "
            "sources lists the edge shards too: a summary and the first limit of them, stale first "
            "(the filter, sort and offset apply to the partition shards only).",
            {
                "200": _json("ShardsAnswer", "The summary and the page"),
                "400": _error("A bad parameter (the message names it and its value)"),
                "503": _unavailable(),
            },
            parameters=_shards_parameters(),
        ),
        "/health": _get(
            "Readiness",
            "200 when the worker runs and, if it hosts the aggregator, has rebuilt its state; else 503.",
            {"200": _json("Health", "Ready"), "503": _json("Health", "Not ready; reason says why")},
        ),
        "/metrics": _get(
            "Prometheus metrics",
            "The dmedian_* metrics in the Prometheus text format.",
            {
                "200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "503": _unavailable(),
            },
        ),
        "/stats": _get(
            "This worker's counters (legacy)",
            "Owned shards, rejection counters and, on the aggregator's worker, the last record.",
            {"200": {"description": "Stats", "content": {_JSON: {"schema": {"type": "object"}}}}},
        ),
        "/openapi.json": _get(
            "This document",
            "The OpenAPI document of this API.",
            {"200": {"description": "OpenAPI 3.0", "content": {_JSON: {"schema": {"type": "object"}}}}},
        ),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "DistributedMedian worker API",
            "version": API_VERSION,
            "description": "The running median and quantiles of the numbers stream, with stated error bounds.",
        },
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
