"""The worker's HTTP API on Faust's web server: /median, /quantiles, /shards, /health, /metrics, /openapi.json.

Every worker answers. The median and the quantiles that the ``medians`` records
carry come from the newest record the worker has: the one it published if it
hosts the aggregator, or the one its follower read from ``medians``, whichever
is newer. Any other quantile needs the merged sketch, which only the
aggregator's worker holds: it answers from it; another worker answers 409 and
names the aggregator's worker when the group's assignment says which it is
(no forwarding: a client asks there).

No request ends in a 500: bad parameters are a 400 naming the value, "no
estimate yet" a 404, and anything unexpected (a rebalance pulling a service away
mid-request) a 503 with the reason, logged with its traceback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View

from pipeline.app.metrics import CONTENT_TYPE, WorkerMetrics
from pipeline.app.shard_rows import gather_rows, gather_sources, with_local_medians
from pipeline.core.api_answers import (
    ApiError,
    WorkerCondition,
    error_body,
    health_answer,
    median_answer,
    newest_record,
    parse_quantiles,
    quantiles_from_record,
    quantiles_from_sketch,
    record_quantiles,
)
from pipeline.core.api_schema import openapi_document
from pipeline.core.shard_listing import SHARD_PARAMETERS, parse_shard_query, select_page, shards_answer
from pipeline.core.source_listing import sources_answer
from pipeline.core.wire import MedianRecord

if TYPE_CHECKING:
    from pipeline.app.factory import Pipeline

__all__ = ["MAX_REQUEST_LINE", "ApiHandlers", "register_api_views", "web_application_options"]

logger = logging.getLogger(__name__)

_Answer = tuple[int, dict[str, Any]]

MAX_REQUEST_LINE = 64 * 1024
"""Longest request line the web server reads (aiohttp's default is 8,190 bytes)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class ApiHandlers:
    """The answers, from the live services of one worker (each returns status and body)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._metrics = WorkerMetrics(pipeline)
        self._openapi = orjson.dumps(openapi_document())

    @property
    def openapi_bytes(self) -> bytes:
        """The OpenAPI document, serialized once."""
        return self._openapi

    def metrics_bytes(self) -> bytes:
        """The Prometheus text of this worker's metrics."""
        return self._metrics.render()

    def _record(self) -> MedianRecord | None:
        return newest_record(self._pipeline.aggregator.last_record, self._pipeline.shards.latest_record)

    def median(self) -> _Answer:
        """``GET /median``."""
        record = self._record()
        if record is not None:
            return 200, median_answer(record, _now_ms())
        status, body = self._from_sketch((0.5,), None)
        if status != 200:
            return status, body
        row = body.pop("quantiles")[0]
        band = {key: row[key] for key in ("value", "lower", "upper")}
        return 200, body | {"median": band, "rank_bound": row["rank_bound"]}

    def quantiles(self, raw_q: list[str]) -> _Answer:
        """``GET /quantiles?q=...``."""
        qs = parse_quantiles(raw_q, self._pipeline.settings.quantiles)
        record = self._record()
        if record is not None:
            answer = quantiles_from_record(record, qs, _now_ms())
            if answer is not None:
                return 200, answer
        return self._from_sketch(qs, record)

    def _from_sketch(self, qs: tuple[float, ...], record: MedianRecord | None) -> _Answer:
        aggregator = self._pipeline.aggregator
        estimator = aggregator.estimator
        # Partition shards, edge shards, or both: either kind is in the merged sketch.
        if estimator is not None and estimator.shard_count + estimator.source_count:
            now_ms = _now_ms()
            stale_after_ms = 2 * self._pipeline.settings.heartbeat_ms
            answer = quantiles_from_sketch(
                estimator.merged_sketch(),
                qs,
                n=estimator.n,
                shards=estimator.shard_count,
                sources=estimator.source_count,
                pending=aggregator.liveness.pending() + aggregator.sources.pending(),
                stale_shards=len(aggregator.liveness.stale(now_ms, stale_after_ms)),
                stale_sources=len(aggregator.sources.stale(now_ms, stale_after_ms)),
                now_ms=now_ms,
            )
            return 200, answer
        if aggregator.hosted and estimator is None:
            raise ApiError(503, "this worker hosts the aggregator and is rebuilding its state; retry in a second")
        if record is None:
            raise ApiError(404, "no estimate yet: no medians record has been published or read, and no shard has data")
        url = self._aggregator_url()
        where = f"the worker at {url}" if url else "the worker that hosts the aggregator (see /health on each worker)"
        carried = ", ".join(repr(q) for q in record_quantiles(record))
        raise ApiError(
            409,
            f"the latest record carries q = {carried}; any other q is answered from the merged sketch, "
            f"which only the aggregator's worker holds: ask {where}",
            aggregator_url=url,
            record_quantiles=list(record_quantiles(record)),
        )

    def _aggregator_url(self) -> str | None:
        # Faust's assignor shares, with every member, which worker reads which
        # partition of the agents' topics: the sketches topic has one partition.
        try:
            assignor: Any = self._pipeline.app.assignor
            distribution = assignor.external_topic_distribution
            for url, topics in distribution.items():
                if topics.get(self._pipeline.settings.topic_sketches):
                    return str(url)
        except Exception:  # no assignment yet, or an assignor without this map
            logger.debug("aggregator's worker unknown", exc_info=True)
        return None

    def shards(self, params: dict[str, list[str]]) -> _Answer:
        """``GET /shards?limit=&offset=&stale=&sort=&order=``: a summary of every shard and one page.

        With the edge shards on the aggregator's worker: their summary and the first
        ``limit`` of them, stale first (the shards' filter, sort and offset do not apply).
        """
        query = parse_shard_query(params)
        now_ms = _now_ms()
        rows, complete = gather_rows(self._pipeline, now_ms)
        page = select_page(rows, query)
        page = replace(page, rows=with_local_medians(self._pipeline, page.rows))
        stale_after_ms = 2 * self._pipeline.settings.heartbeat_ms
        gathered = gather_sources(self._pipeline, now_ms)
        sources = None
        if gathered is not None:
            source_list, source_pending = gathered
            sources = sources_answer(source_list, query.limit, now_ms=now_ms, pending=source_pending)
        body = shards_answer(
            rows, page, query, now_ms=now_ms, complete=complete, stale_after_ms=stale_after_ms, sources=sources
        )
        return 200, body

    def health(self) -> _Answer:
        """``GET /health``."""
        app, aggregator = self._pipeline.app, self._pipeline.aggregator
        record = self._record()
        condition = WorkerCondition(
            # Joined: the consumer had an assignment (Kafka's generations start at 1).
            started=app.started and getattr(app, "consumer_generation_id", 0) > 0,
            rebalancing=bool(app.rebalancing),
            recovering=bool(getattr(app, "in_recovery", False)),
            hosted=aggregator.hosted,
            restored=aggregator.estimator is not None,
            owned=tuple(self._pipeline.shards.owned),
            record_ts=None if record is None else record.ts,
        )
        return health_answer(condition, _now_ms())


def web_application_options() -> dict[str, Any]:
    """aiohttp options for the app (``create_app`` passes them to ``faust.App``).

    aiohttp refuses a request line over 8 KiB with its own plain-text 400, before
    any view runs: a list of a few thousand q would never get the API's message.
    Faust passes these to aiohttp's Application, whose handler_args reach the
    request parser. They must be given when the app is built: setting them later
    warns (Faust's AlreadyConfiguredWarning), and adding a view builds the server.
    """
    return {"handler_args": {"max_line_size": MAX_REQUEST_LINE}}


class _ApiView(View):
    """A view whose every outcome is a JSON answer: never an exception into aiohttp (a 500)."""

    def answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
        # orjson writes NaN as null, and refuses nothing we build.
        return self.bytes(orjson.dumps(body), content_type="application/json", status=status, headers=headers)

    async def dispatch(self, request: Any) -> Any:
        try:
            return await super().dispatch(request)
        except ApiError as exc:
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            return self.answer(exc.status, exc.body(), headers)
        except Exception as exc:
            logger.exception("%s %s failed", request.method, request.path)
            body = error_body(503, f"the worker could not answer now ({type(exc).__name__}: {exc}); retry")
            return self.answer(503, body, {"Retry-After": "1"})


def register_api_views(pipeline: Pipeline) -> ApiHandlers:
    """Add the API's views to the pipeline's app (not ``/``: the dashboard owns it); return their handlers."""
    handlers = ApiHandlers(pipeline)
    add = pipeline.app.page

    @add("/median")
    class MedianView(_ApiView):
        async def get(self, _request: Request) -> Response:
            return self.answer(*handlers.median())

    @add("/quantiles")
    class QuantilesView(_ApiView):
        async def get(self, request: Request) -> Response:
            query: Any = request.query  # aiohttp's MultiDict: getall() reads repeated q too
            return self.answer(*handlers.quantiles(list(query.getall("q", []))))

    @add("/shards")
    class ShardsView(_ApiView):
        async def get(self, request: Request) -> Response:
            query: Any = request.query
            return self.answer(*handlers.shards({name: list(query.getall(name, [])) for name in SHARD_PARAMETERS}))

    @add("/health")
    class HealthView(_ApiView):
        async def get(self, _request: Request) -> Response:
            return self.answer(*handlers.health())

    @add("/metrics")
    class MetricsView(_ApiView):
        async def get(self, _request: Request) -> Response:
            return self.bytes(handlers.metrics_bytes(), headers={"Content-Type": CONTENT_TYPE})

    @add("/openapi.json")
    class OpenApiView(_ApiView):
        async def get(self, _request: Request) -> Response:
            return self.bytes(handlers.openapi_bytes, content_type="application/json")

    return handlers
