"""The live dashboard: one HTML page, its static assets, and the JSON document it polls.

``GET /`` serves the page, ``GET /static/{name}`` its scripts and styles (uPlot is
vendored under ``pipeline/app/static``, so no request leaves the machine), and
``GET /dashboard.json`` everything the page shows in one response: the newest
``medians`` record, a summary of the shards this worker knows (every shard on the
aggregator's worker) with the distributions of their counts and snapshot ages and
the worst few, and what it sent on ``sketches``. The page
polls it about once a second and keeps the history (and the ingest rate) itself:
the worker keeps no history for it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View

from pipeline.app.shard_rows import gather_rows, with_local_medians
from pipeline.core.shard_listing import histogram, row_body, shards_summary, worst, worst_first
from pipeline.core.wire import MedianRecord

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pipeline.app.factory import Pipeline

__all__ = ["ASSETS", "HISTOGRAM_BINS", "WORST_SHARDS", "Asset", "dashboard_body", "load_assets", "register_dashboard"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Asset:
    """One file the dashboard serves from package data."""

    name: str
    """The file's name under ``pipeline/app/static`` (and under ``/static/``)."""
    content_type: str
    """The ``Content-Type`` it is served with (sent as a header: aiohttp refuses a charset in ``content_type``)."""


_PAGE = "index.html"

ASSETS: tuple[Asset, ...] = (
    Asset(_PAGE, "text/html; charset=utf-8"),
    Asset("dashboard.js", "text/javascript; charset=utf-8"),
    Asset("dashboard.css", "text/css; charset=utf-8"),
    Asset("uplot.iife.min.js", "text/javascript; charset=utf-8"),
    Asset("uplot.min.css", "text/css; charset=utf-8"),
    Asset("uplot.LICENSE", "text/plain; charset=utf-8"),
)
"""Everything served, by name: the only names ``/static/`` answers (no path is ever built from a request)."""

# Only this machine's scripts and styles; inline styles because uPlot sizes its
# elements with them. The icon is a data: URL so the browser asks for no favicon.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def load_assets() -> Mapping[str, bytes]:
    """Read every asset from package data once (a missing file fails the worker's start, not a request)."""
    static = resources.files("pipeline.app").joinpath("static")
    return MappingProxyType({asset.name: static.joinpath(asset.name).read_bytes() for asset in ASSETS})


WORST_SHARDS = 10
"""Shards the page lists one by one: the worst (stale, then the oldest snapshot, then lag)."""
HISTOGRAM_BINS = 12
"""Bars in each of the page's two histograms (numbers per shard, snapshot age)."""


def _shards_view(pipeline: Pipeline, now_ms: int) -> dict[str, Any]:
    # The same rows as /shards: a summary, two histograms and the few worst, never
    # one row per shard (at 10,000 shards the page would be a 10,000-row table).
    rows, complete = gather_rows(pipeline, now_ms)
    listed = with_local_medians(pipeline, worst(rows, WORST_SHARDS, worst_first(now_ms)))
    counts = [row.n for row in rows if row.n is not None]
    ages = [age for row in rows if (age := row.age_s(now_ms)) is not None]
    return {
        "complete": complete,
        "summary": shards_summary(rows, now_ms),
        "histograms": {"n": histogram(counts, HISTOGRAM_BINS), "age_s": histogram(ages, HISTOGRAM_BINS)},
        "worst": [row_body(row, now_ms) for row in listed],
        "owned_n": sum(row.n or 0 for row in rows if row.owned_here),
    }


def _latest(pipeline: Pipeline) -> tuple[MedianRecord | None, str | None]:
    # The newer of the aggregator's own last record (when this worker hosts, or hosted,
    # it) and the newest read from ``medians`` -- the same choice ``/median`` makes, so
    # the page and the API agree. A tie goes to the aggregator's: it is the same record.
    own, read = pipeline.aggregator.last_record, pipeline.shards.latest_record
    if own is not None and (read is None or own.ts >= read.ts):
        return own, "aggregator"
    return (read, "medians") if read is not None else (None, None)


def dashboard_body(pipeline: Pipeline, now_ms: int) -> dict[str, Any]:
    """The document ``/dashboard.json`` serves (see the page's script for how each field is shown)."""
    record, source = _latest(pipeline)
    settings = pipeline.settings
    return {
        "now_ms": now_ms,
        "record": orjson.loads(record.to_json()) if record is not None else None,
        "record_source": source,
        "stale_shards": record.stale_shards if record is not None else 0,
        "stale_after_ms": 2 * settings.heartbeat_ms,
        "partitions": settings.numbers_partitions,
        "topic": settings.topic_numbers,
        "emission_rule": settings.emission_rule,
        "aggregator_hosted": pipeline.aggregator.hosted,
        "shards": _shards_view(pipeline, now_ms),
        "sent": {
            "snapshots": pipeline.shards.snapshots_sent,
            "snapshot_bytes": pipeline.shards.snapshot_bytes_sent,
            "heartbeats": pipeline.shards.heartbeats_sent,
        },
        "rejected": dict(pipeline.dead_letters.counts),
    }


def register_dashboard(pipeline: Pipeline) -> None:
    """Add ``/``, ``/static/{name}`` and ``/dashboard.json`` to the app's web server."""
    app = pipeline.app
    assets = load_assets()
    types = MappingProxyType({asset.name: asset.content_type for asset in ASSETS})

    @app.page("/")
    class DashboardPage(View):
        async def get(self, _request: Request) -> Response:
            headers = {
                "Content-Type": types[_PAGE],
                "Content-Security-Policy": _PAGE_POLICY,
                "Cache-Control": "no-cache",
            }
            return self.bytes(assets[_PAGE], headers=headers)

    @app.page("/static/{name}")
    class DashboardAsset(View):
        async def get(self, _request: Request, name: str) -> Response:
            # A name, never a path: anything not in the list (``..``, ``%2F``, ...) is 404.
            body = assets.get(name)
            if body is None or name == _PAGE:
                return self.error(404, "no such asset")
            headers = {"Content-Type": types[name], "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
            return self.bytes(body, headers=headers)

    @app.page("/dashboard.json")
    class DashboardData(View):
        async def get(self, _request: Request) -> Response:
            body = dashboard_body(pipeline, int(time.time() * 1000))
            return self.bytes(
                orjson.dumps(body), content_type="application/json", headers={"Cache-Control": "no-store"}
            )

    logger.debug("dashboard registered: / and %d assets", len(assets) - 1)
