"""Topic sends that cost the sender no event-loop round trips.

Faust's ``Topic.publish_message`` asks ``app.maybe_start_producer()`` for the
producer on every message, and mode's ``@stampede`` wraps that call with three
``asyncio.sleep(0)``: three passes of the event loop per message sent. A pass
runs every ready task (the fetcher, the flush timer, the aggregator, the web
server), so on a busy worker each send waited milliseconds for nothing. That
paced both the shard agent (one snapshot per batch) and Faust's producer buffer,
which sends every table changelog write one after another: at 8,192 partitions the
shard agent spent four fifths of its time in sends of about 8 ms each.

:class:`DirectTopic` returns the producer at once when it is started and no
transaction is under way, which is what ``maybe_start_producer`` returns then;
otherwise it asks Faust as before. Messages, partitions, serializers, callbacks
and sensors are untouched: only the wait goes. ``faust.App(..., Topic=DirectTopic)``
makes it the class of every topic the app builds, table changelogs included.
"""

from __future__ import annotations

import faust
from faust.types import ProducerT

__all__ = ["DirectTopic"]


class DirectTopic(faust.Topic):
    """A Faust topic whose sends use the started producer without passes of the event loop."""

    async def _get_producer(self) -> ProducerT:
        app = self.app
        producer = app.producer
        if producer.started and not app.in_transaction:
            return producer
        started: ProducerT = await app.maybe_start_producer()
        return started
