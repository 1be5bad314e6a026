"""Guards on the Faust internals the app relies on: fail loudly on an upgrade that moves them."""

from __future__ import annotations

import contextvars
import importlib
import inspect

import faust
import faust.stores.rocksdb
import faust.tables.base
import faust.transport
import pytest
from faust.events import Event
from faust.streams import current_event
from faust.types.tuples import Message

from pipeline.app.event_context import bound_to_event
from pipeline.transport import SCHEME, BatchTransport, register_transport
from pipeline.transport.batching import FAUST_INTERNALS


def _event(app: faust.App, partition: int) -> Event:
    message = Message("numbers", partition, 41, 0.0, 0, None, b"k", b"v", None)
    return Event(app, b"k", b"v", {}, message)


def test_current_event_is_a_context_variable_we_can_bind() -> None:
    assert isinstance(faust.streams._current_event, contextvars.ContextVar)
    app = faust.App("internals-test", autodiscover=False)
    event = _event(app, 5)
    assert current_event() is None
    with bound_to_event(event):
        bound = current_event()
        assert bound is event
        assert bound.message.partition == 5
    assert current_event() is None


def test_table_writes_take_their_changelog_partition_from_the_current_event() -> None:
    # If Faust stops routing by the current event, shard p's sketch could land in
    # another changelog partition; the integration restart test would catch it,
    # this one says why.
    assert "current_event()" in inspect.getsource(faust.tables.base.Collection.partition_for_key)
    assert "current_event()" in inspect.getsource(faust.stores.rocksdb.Store._set)


def test_faust_and_aiokafka_are_the_tested_versions() -> None:
    import aiokafka  # noqa: PLC0415

    assert faust.__version__.startswith("0.15."), faust.__version__
    assert aiokafka.__version__.startswith("0.14."), aiokafka.__version__


def _exists(path: str) -> bool:
    """Whether ``module:Class.name`` exists: as an attribute, or as an annotated instance attribute."""
    module_name, _, attributes = path.partition(":")
    *owners, name = attributes.split(".")
    target: object = importlib.import_module(module_name)
    for owner in owners:
        target = getattr(target, owner)
    annotated = any(name in getattr(klass, "__annotations__", {}) for klass in getattr(target, "__mro__", ()))
    return hasattr(target, name) or annotated


@pytest.mark.parametrize("path", FAUST_INTERNALS)
def test_the_batch_transport_s_faust_internals_still_exist(path: str) -> None:
    assert _exists(path), f"{path} is gone: pipeline/transport/batching.py must be revisited for this Faust"


def test_the_batch_transport_is_registered_under_its_scheme() -> None:
    register_transport()
    assert faust.transport.by_url(f"{SCHEME}://127.0.0.1:9092") is BatchTransport
