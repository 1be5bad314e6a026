"""HTTP views on Faust's web server: ``/stats``, and the API of :mod:`pipeline.app.api_views`.

``/stats`` (this worker's shards, counters and last published record) predates
the API and stays for scripts that read it; the API's ``/shards`` and
``/metrics`` say the same and more. Its per-shard detail (a median read from each
sketch) stops at :data:`~pipeline.core.shard_listing.MAX_LIMIT` shards, the lowest
ids, with ``shards_owned`` counting them all: a worker of 10,000 shards answers
in the time of a thousand, and ``/shards`` pages the rest.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import orjson
from faust.web import Request, Response, View

from pipeline.app.api_views import register_api_views
from pipeline.core.shard_listing import MAX_LIMIT

if TYPE_CHECKING:
    from pipeline.app.factory import Pipeline

__all__ = ["register_views"]

logger = logging.getLogger(__name__)


def register_views(pipeline: Pipeline) -> None:
    """Add ``/stats`` (this worker: owned shards, counters, aggregator state) and the API to the app."""
    app = pipeline.app
    register_api_views(pipeline)

    @app.page("/stats")
    class StatsView(View):
        async def get(self, _request: Request) -> Response:
            shards: dict[str, Any] = {}
            owned = pipeline.shards.owned
            for shard in owned[:MAX_LIMIT]:
                state = pipeline.shards.local_state(shard)
                if state is not None:
                    median = state.sketch.get_quantile(0.5) if state.n else math.nan
                    shards[str(shard)] = {
                        "n": state.n,
                        "median": None if math.isnan(median) else median,
                        "last_offset": state.last_offset,
                        "rejected": state.rejected,
                    }
            record = pipeline.aggregator.last_record
            body = {
                "shards": shards,
                "shards_owned": len(owned),
                "shards_truncated": len(owned) > MAX_LIMIT,
                "rejected": dict(pipeline.dead_letters.counts),
                "snapshots_sent": pipeline.shards.snapshots_sent,
                "snapshot_bytes_sent": pipeline.shards.snapshot_bytes_sent,
                "aggregator_hosted": pipeline.aggregator.hosted,
                "last_record": orjson.loads(record.to_json()) if record else None,
            }
            return self.bytes(orjson.dumps(body), content_type="application/json")
