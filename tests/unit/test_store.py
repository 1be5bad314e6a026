"""The one-database table store against a real RocksDB database in a temporary directory.

A real Faust app and table, never started: the store needs only its config (the
table dir), the table's changelog topic name and the assignor's active set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest
import rocksdict
from faust.assignor.client_assignment import ClientAssignment
from faust.assignor.partition_assignor import PartitionAssignor
from faust.events import Event
from faust.stores.rocksdb import Store as FaustRocksStore
from faust.types import TP
from faust.types.tuples import Message

from config import load_settings
from pipeline.app.event_context import bound_to_event
from pipeline.app.factory import create_app
from pipeline.app.store import STORE_URL, OneDatabaseStore, StateDirInUseError, register_store
from pipeline.core.store_keys import (
    MAX_PARTITION,
    data_key,
    decode_offset,
    encode_offset,
    offset_key,
    partition_range,
    split_key,
)

TABLE = "shard-sketches"


class _Deployment:
    """One app with the shard table on the one-database store, in a data dir of its own."""

    def __init__(self, data_dir: Path) -> None:
        register_store()
        self.app = faust.App("store-test", datadir=str(data_dir), autodiscover=False)
        table = self.app.Table(TABLE, key_type=bytes, value_type=bytes, partitions=8, store=STORE_URL)
        # The concrete class: the interface the app declares (TableT) has no changelog_topic_name.
        assert isinstance(table, faust.Table)
        self.table = table
        store = table.data
        assert isinstance(store, OneDatabaseStore)
        self.store = store
        self.changelog = self.table.changelog_topic_name

    def tp(self, partition: int) -> TP:
        return TP(self.changelog, partition)

    def event(self, partition: int, offset: int = 0, key: bytes = b"k", value: bytes | None = b"v") -> Event:
        message = Message(self.changelog, partition, offset, 0.0, 0, None, key, value, None)
        return Event(self.app, key, value, {}, message)

    def write(self, partition: int, key: bytes, value: bytes) -> None:
        # What the table does locally on `table[key] = value` (it also sends the
        # entry to the changelog, which needs a running app).
        with bound_to_event(self.event(partition)):
            self.store[key] = value

    def set_actives(self, partitions: set[int]) -> None:
        # What PartitionAssignor.on_assignment stores after a real rebalance.
        # The concrete assignor: the interface (PartitionAssignorT) does not declare _assignment.
        assignor = self.app.assignor
        assert isinstance(assignor, PartitionAssignor)
        assignor._assignment = ClientAssignment(actives={self.changelog: sorted(partitions)}, standbys={})

    def tps(self, partitions: set[int]) -> set[TP]:
        return {self.tp(p) for p in partitions}

    def rebalance(self, assigned: set[int], revoked: set[int], newly: set[int]) -> None:
        asyncio.run(self.store.on_rebalance(self.tps(assigned), self.tps(revoked), self.tps(newly)))

    def close(self) -> None:
        asyncio.run(self.store.on_stop())


def _raw_keys(db: rocksdict.Rdict) -> list[bytes]:
    """A raw-mode database's keys, each checked to be bytes (the stubs allow any key type)."""
    keys: list[bytes] = []
    for key in db.keys():  # noqa: SIM118 (an Rdict iterates its keys only through keys())
        assert isinstance(key, bytes)
        keys.append(key)
    return keys


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[_Deployment]:
    made = _Deployment(tmp_path)
    yield made
    made.close()


# -- the key layout -------------------------------------------------------------------------


def test_each_partition_is_one_contiguous_range_holding_its_keys_and_offset() -> None:
    partitions, table_keys = (0, 1, 255, 256, 70_000), (b"", b"0", b"\xff" * 9)
    keys = [data_key(p, k) for p in partitions for k in table_keys]
    for p in partitions:
        start, end = partition_range(p)
        assert start <= offset_key(p) < end
        assert {key for key in keys if start <= key < end} == {data_key(p, k) for k in table_keys}
    # Sorted by partition first: big-endian, fixed width.
    assert sorted(keys) == keys
    assert partition_range(0)[1] == partition_range(1)[0]
    last_start, last_end = partition_range(MAX_PARTITION)
    assert last_start < data_key(MAX_PARTITION, b"\xff" * 20) < last_end


def test_database_keys_split_back_into_partition_and_table_key() -> None:
    assert split_key(data_key(7, b"17")) == (7, b"17")
    assert split_key(data_key(7, b"")) == (7, b"")
    assert split_key(offset_key(70_000)) == (70_000, None)
    assert decode_offset(encode_offset(123_456_789_012)) == 123_456_789_012
    for bad in (b"", b"\x00\x00\x00\x07", b"\x00\x00\x00\x07\x02k", b"\x00\x00\x00\x07\x00extra"):
        with pytest.raises(ValueError, match="database key"):
            split_key(bad)
    with pytest.raises(ValueError, match="outside"):
        data_key(-1, b"k")
    with pytest.raises(ValueError, match="outside"):
        offset_key(MAX_PARTITION + 1)


# -- the store --------------------------------------------------------------------------------


def test_one_database_holds_every_partition(deployment: _Deployment) -> None:
    for p in range(8):
        deployment.write(p, str(p).encode(), f"state {p}".encode())

    tabledir = Path(deployment.app.conf.tabledir)
    assert [path.name for path in tabledir.iterdir() if path.name.endswith(".db")] == [f"{TABLE}.db"]
    raw = dict(deployment.store.db.items())
    assert raw == {data_key(p, str(p).encode()): f"state {p}".encode() for p in range(8)}


def test_reads_with_an_event_look_in_its_partition_and_without_one_find_the_key_anywhere(
    deployment: _Deployment,
) -> None:
    deployment.write(3, b"3", b"three")
    deployment.write(5, b"5", b"five")

    with bound_to_event(deployment.event(3)):
        assert deployment.table.get(b"3") == b"three"
        assert deployment.table.get(b"5") is None  # as Faust's store: the event's partition only
        assert b"3" in deployment.table
        assert b"5" not in deployment.table
    # The flush timer reads without an event.
    assert deployment.table.get(b"5") == b"five"
    assert deployment.table.get(b"3") == b"three"
    assert deployment.table.get(b"4") is None
    assert b"5" in deployment.store
    assert b"4" not in deployment.store


def test_a_write_without_an_event_is_refused_with_the_reason(deployment: _Deployment) -> None:
    with pytest.raises(RuntimeError, match="current event"):
        deployment.store[b"1"] = b"x"


def test_the_key_index_built_before_later_writes_stays_current(deployment: _Deployment) -> None:
    deployment.write(1, b"a", b"1")
    assert deployment.table.get(b"a") == b"1"  # builds the index
    deployment.write(2, b"b", b"2")
    deployment.store.apply_changelog_batch(
        [deployment.event(6, 10, b"c", b"3"), deployment.event(1, 11, b"a", None)], lambda k: k, lambda v: v
    )
    assert deployment.table.get(b"b") == b"2"
    assert deployment.table.get(b"c") == b"3"
    assert deployment.table.get(b"a") is None
    del deployment.store[b"b"]
    assert deployment.table.get(b"b") is None
    assert dict(deployment.store.db.items()) == {data_key(6, b"c"): b"3", offset_key(6): encode_offset(10),
                                                 offset_key(1): encode_offset(11)}  # fmt: skip


def test_changelog_batches_land_in_their_partitions_with_the_highest_offset_of_each(deployment: _Deployment) -> None:
    batch = [
        deployment.event(0, 4, b"0", b"old"),
        deployment.event(2, 9, b"2", b"two"),
        deployment.event(0, 7, b"0", b"new"),
        deployment.event(0, 5, b"x", b"gone soon"),
        deployment.event(0, 6, b"x", None),
    ]
    deployment.store.apply_changelog_batch(batch, lambda k: k, lambda v: v)

    assert deployment.store.persisted_offset(deployment.tp(0)) == 7
    assert deployment.store.persisted_offset(deployment.tp(2)) == 9
    assert deployment.store.persisted_offset(deployment.tp(1)) is None
    with bound_to_event(deployment.event(0)):
        assert deployment.table.get(b"0") == b"new"
        assert deployment.table.get(b"x") is None
    with bound_to_event(deployment.event(2)):
        assert deployment.table.get(b"2") == b"two"


def test_state_and_offsets_survive_closing_and_reopening(tmp_path: Path) -> None:
    first = _Deployment(tmp_path)
    for p in range(4):
        first.write(p, str(p).encode(), f"v{p}".encode())
        first.store.set_persisted_offset(first.tp(p), 100 + p)
    first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.store.persisted_offset(first.tp(0))

    second = _Deployment(tmp_path)
    try:
        asyncio.run(second.store.on_start())
        assert [second.store.persisted_offset(second.tp(p)) for p in range(5)] == [100, 101, 102, 103, None]
        assert [second.table.get(str(p).encode()) for p in range(4)] == [b"v0", b"v1", b"v2", b"v3"]
    finally:
        second.close()


def test_a_revoked_partition_is_dropped_keys_and_offset_together_and_fenced_until_assigned_again(
    deployment: _Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    for p in range(4):
        deployment.write(p, str(p).encode(), f"v{p}".encode())
        deployment.store.set_persisted_offset(deployment.tp(p), 10 + p)
    assert deployment.table.get(b"1") == b"v1"  # builds the index

    # A source-topic partition in the revoked set is not the table's: it is ignored.
    deployment.rebalance(assigned={0, 2, 3}, revoked={1}, newly=set())
    asyncio.run(deployment.store.on_rebalance(set(), {TP("numbers", 2)}, set()))

    start, end = partition_range(1)
    assert [key for key in _raw_keys(deployment.store.db) if start <= key < end] == []
    assert deployment.store.persisted_offset(deployment.tp(1)) is None
    assert deployment.table.get(b"1") is None
    assert [deployment.table.get(str(p).encode()) for p in (0, 2, 3)] == [b"v0", b"v2", b"v3"]
    assert [deployment.store.persisted_offset(deployment.tp(p)) for p in (0, 2, 3)] == [10, 12, 13]

    # A late acknowledgement or write for the revoked partition must not leave an
    # offset without its keys (a later restore would skip them).
    with caplog.at_level(logging.WARNING, logger="pipeline.app.store"):
        deployment.store.set_persisted_offset(deployment.tp(1), 99)
        deployment.write(1, b"1", b"late")
        deployment.store.apply_changelog_batch([deployment.event(1, 50, b"1", b"late")], lambda k: k, lambda v: v)
    assert deployment.store.persisted_offset(deployment.tp(1)) is None
    assert deployment.table.get(b"1") is None
    assert sum("revoked here" in record.getMessage() for record in caplog.records) == 3

    # Assigned again: it restores from the start of the changelog, and accepts writes.
    deployment.rebalance(assigned={0, 1, 2, 3}, revoked=set(), newly={1})
    assert deployment.store.persisted_offset(deployment.tp(1)) is None
    deployment.store.apply_changelog_batch([deployment.event(1, 13, b"1", b"restored")], lambda k: k, lambda v: v)
    assert deployment.store.persisted_offset(deployment.tp(1)) == 13
    assert deployment.table.get(b"1") == b"restored"


def test_iteration_and_size_cover_the_active_partitions_only(deployment: _Deployment) -> None:
    for p in range(6):
        deployment.write(p, str(p).encode(), f"v{p}".encode())
        deployment.store.set_persisted_offset(deployment.tp(p), p)
    deployment.set_actives({1, 4})

    assert sorted(deployment.table.keys()) == [b"1", b"4"]
    assert sorted(deployment.table.values()) == [b"v1", b"v4"]
    assert sorted(deployment.table.items()) == [(b"1", b"v1"), (b"4", b"v4")]
    assert len(deployment.table) == 2


def test_clearing_locally_is_refused_and_reset_state_removes_the_database(deployment: _Deployment) -> None:
    deployment.write(0, b"0", b"v")
    with pytest.raises(NotImplementedError, match="changelog"):
        deployment.store.clear()
    deployment.store.reset_state()
    assert not deployment.store.path.exists()
    assert deployment.table.get(b"0") is None
    assert deployment.store.persisted_offset(deployment.tp(0)) is None


def test_a_database_held_by_another_process_fails_with_the_fix_after_a_bounded_wait(tmp_path: Path) -> None:
    first = _Deployment(tmp_path)
    second = _Deployment(tmp_path)
    try:
        asyncio.run(first.store.on_start())
        second.store.open_timeout_s = 1.5
        with pytest.raises(StateDirInUseError, match="own DMEDIAN_DATA_DIR"):
            asyncio.run(second.store.on_start())
    finally:
        first.close()
        second.close()


def test_an_existing_rocksdb_dir_is_opened_not_replaced(tmp_path: Path, deployment: _Deployment) -> None:
    deployment.write(2, b"2", b"kept")
    deployment.close()
    # The directory is a plain RocksDB database any rocksdict client can read.
    db = rocksdict.Rdict(str(deployment.store.path), options=rocksdict.Options(raw_mode=True))
    try:
        assert db.get(data_key(2, b"2")) == b"kept"
    finally:
        db.close()


# -- the wiring ------------------------------------------------------------------------------


def test_the_shard_table_uses_one_database_by_default_and_faust_s_store_when_asked(tmp_path: Path) -> None:
    settings = load_settings(environ={"DMEDIAN_DATA_DIR": str(tmp_path)})
    assert settings.state_store == "one-db"
    table = create_app(settings).app.tables[TABLE]
    assert isinstance(table, faust.Table)  # the interface (CollectionT) does not declare data
    assert isinstance(table.data, OneDatabaseStore)

    per_partition = load_settings(environ={"DMEDIAN_DATA_DIR": str(tmp_path), "DMEDIAN_STATE_STORE": "per-partition"})
    table = create_app(per_partition).app.tables[TABLE]
    assert isinstance(table, faust.Table)
    assert type(table.data) is FaustRocksStore
