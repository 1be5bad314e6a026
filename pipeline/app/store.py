"""A Faust table store that keeps every partition in one RocksDB database per worker.

Faust's RocksDB store opens one database per table partition: at thousands of
shards a worker holds thousands of databases, each with its own files, write
buffers, block cache and lock, opened and closed on every rebalance. Like Flink,
which keeps all key groups of an operator instance in one RocksDB instance, this
store opens one database per table and worker and keeps each partition's keys
under a partition prefix (``pipeline/core/store_keys.py``), so a partition is
one contiguous key range.

It stays what Faust's store is: RocksDB-backed (rocksdict, opened with the
table's options through Faust's own ``RocksDBOptions``) and changelog-backed.

- **Offsets.** Each partition's persisted changelog offset is a key inside the
  partition's range. A changelog batch writes its entries and the new offsets in
  one atomic ``WriteBatch``, so after a crash the keys are never behind the offset.
- **Revoke drops the partition.** When a changelog partition leaves this worker
  (neither active nor standby any more), its whole range, keys and offset
  together, is removed by one range delete. Faust's store keeps the files and
  the offset instead, which is also correct while keys and offset agree; we drop
  because (a) another worker owns the partition now, so the local copy only goes
  stale, and holding it costs disk and compaction work in the one shared
  database; (b) with no offset left, a later re-assignment restores the
  partition from the start of its (compacted) changelog, which cannot be wrong,
  where resuming from a stale offset depends on the changelog still holding
  every record after it. Until the partition is assigned again, late writes to
  it (a changelog acknowledgement arriving after the drop) are ignored and
  logged: an offset written without its keys would make a later restore skip
  them. A partition that moves from active to standby is not revoked (its
  changelog partition stays assigned), so standbys keep their state.
- **A restart** keeps everything: Faust does not revoke on shutdown. The next
  start reads each partition's offset and recovers from there, as with Faust's
  store.
- **Lookups** follow Faust's store: with a current event, the event's partition;
  without one (the shard agent's flush timer), an in-memory key -> partition
  index, built by one scan of the database when first needed and kept current
  by every write. A table key lives in one partition (Faust's contract for a
  partitioned table), so the index holds one partition per key.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import rocksdict
from faust.stores import STORES
from faust.stores.base import SerializedStore
from faust.stores.rocksdb import RocksDBOptions
from faust.streams import current_event
from faust.types import TP, AppT, CollectionT, EventT
from yarl import URL

from pipeline.core.store_keys import (
    data_key,
    decode_offset,
    encode_offset,
    offset_key,
    partition_range,
    split_key,
)

__all__ = ["STORE_SCHEME", "STORE_URL", "OneDatabaseStore", "StateDirInUseError", "register_store"]

logger = logging.getLogger(__name__)

STORE_SCHEME = "onedb"
"""The store URL scheme of :class:`OneDatabaseStore`."""

STORE_URL = f"{STORE_SCHEME}:///"
"""A table's ``store=`` for :class:`OneDatabaseStore`. Not ``onedb://``: an empty yarl URL is
false, and Faust then silently falls back to the app's default store."""

_OPEN_RETRY_INTERVAL_S = 1.0


class StateDirInUseError(RuntimeError):
    """Another process holds the table's database: two workers share a data dir."""


def register_store() -> None:
    """Make ``onedb:`` store URLs use :class:`OneDatabaseStore` (idempotent).

    ``pyproject.toml`` registers the same name in the ``faust.stores`` entry-point
    group; this makes it independent of how the package was installed.
    """
    STORES.aliases[STORE_SCHEME] = f"{__name__}:{OneDatabaseStore.__name__}"


class OneDatabaseStore(SerializedStore[Any, Any]):
    """Every partition of one table in one RocksDB database, keyed by partition prefix."""

    open_timeout_s: float = 30.0
    """How long a start waits for another process to release the database's lock."""

    def __init__(
        self,
        url: str | URL,
        app: AppT,
        table: CollectionT,
        *,
        options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(url, app, table, options=options, **kwargs)
        # A copy: Faust's own store pops keys out of the table's options dict.
        self._rocksdb = RocksDBOptions(**dict(options or {}), use_rocksdict=True)
        self._db: rocksdict.Rdict | None = None
        self._closed = False
        self._index: dict[bytes, int] | None = None
        self._fenced: set[int] = set()

    # -- the database ---------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The database's directory: one per table, under Faust's table dir."""
        return Path(self.app.conf.tabledir) / f"{self.table_name}.db"

    @property
    def db(self) -> rocksdict.Rdict:
        """The open database (opened on first use)."""
        if self._db is None:
            if self._closed:
                raise RuntimeError(f"the {self.table_name} store is closed")
            self._db = self._open()
        return self._db

    def _open(self) -> rocksdict.Rdict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        db: rocksdict.Rdict = self._rocksdb.open(self.path)
        logger.info("opened %s in %.3f s (one database for every partition)", self.path, time.monotonic() - started)
        return db

    async def on_start(self) -> None:
        """Open the database, waiting a bounded time for a previous process to release its lock."""
        deadline = time.monotonic() + self.open_timeout_s
        while self._db is None:
            try:
                self._db = self._open()
            except Exception as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise StateDirInUseError(
                        f"{self.path} is locked by another process after {self.open_timeout_s:.0f} s: "
                        "give each worker its own DMEDIAN_DATA_DIR"
                    ) from None
                logger.info("%s is locked (a previous worker still closing?); retrying", self.path)
                await asyncio.sleep(_OPEN_RETRY_INTERVAL_S)

    async def on_stop(self) -> None:
        """Close the database: its lock is free for the next process at once."""
        self._closed = True
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
            logger.info("closed %s", self.path)

    # -- changelog offsets ------------------------------------------------------------

    def persisted_offset(self, tp: TP) -> int | None:
        """The last changelog offset applied to ``tp``'s partition here (None: restore from the start)."""
        raw = self.db.get(offset_key(tp.partition))
        return decode_offset(raw) if raw is not None else None

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """Remember that ``tp``'s partition holds every changelog record up to ``offset``."""
        if self._is_fenced(tp.partition, "changelog offset"):
            return
        if self._closed:
            # An acknowledgement after the stop: the offset stays behind, so the next
            # start re-reads that record from the changelog. Nothing is lost.
            logger.info("changelog offset %d of partition %d arrived after the store closed", offset, tp.partition)
            return
        self.db.put(offset_key(tp.partition), encode_offset(offset))

    def apply_changelog_batch(
        self,
        batch: Iterable[EventT[Any]],
        to_key: Callable[[Any], Any],  # noqa: ARG002 (Faust's signature; keys and values stay raw bytes)
        to_value: Callable[[Any], Any],  # noqa: ARG002
    ) -> None:
        """Write changelog events and each partition's new offset in one atomic batch."""
        writes = rocksdict.WriteBatch(raw_mode=True)
        offsets: dict[int, int] = {}
        index_updates: list[tuple[bytes, int, bool]] = []
        for event in batch:
            message = event.message
            partition, key = message.partition, message.key
            if key is None:
                raise TypeError(f"changelog entry without a key: {message}")
            if self._is_fenced(partition, "changelog entry"):
                continue
            offsets[partition] = max(message.offset, offsets.get(partition, message.offset))
            if message.value is None:
                writes.delete(data_key(partition, key))
            else:
                writes.put(data_key(partition, key), message.value)
            index_updates.append((key, partition, message.value is not None))
        for partition, offset in offsets.items():
            writes.put(offset_key(partition), encode_offset(offset))
        if offsets:
            self.db.write(writes)
        for key, partition, present in index_updates:
            self._index_write(key, partition, present=present)

    # -- rebalance ----------------------------------------------------------------------

    async def on_rebalance(
        self,
        assigned: set[TP],  # noqa: ARG002 (Faust's signature)
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,  # noqa: ARG002
    ) -> None:
        """Drop the partitions that left this worker; accept writes again for those that came back."""
        topics = set(self.table.changelog_topic.topics)
        gone = {tp.partition for tp in revoked if tp.topic in topics}
        back = {tp.partition for tp in newly_assigned if tp.topic in topics}
        self._fenced -= back
        if gone:
            self.drop_partitions(gone)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Remove the partitions' keys and offsets (one range delete each, one write) and fence them."""
        gone = set(partitions)
        writes = rocksdict.WriteBatch(raw_mode=True)
        for partition in sorted(gone):
            writes.delete_range(*partition_range(partition))
        self.db.write(writes)
        self._fenced |= gone
        if self._index is not None:
            self._index = {key: p for key, p in self._index.items() if p not in gone}
        logger.info(
            "dropped the local state of %d revoked partition(s) of %s; re-assigned, they restore from the changelog",
            len(gone),
            self.table_name,
        )

    async def need_active_standby_for(self, tp: TP) -> bool:  # noqa: ARG002 (Faust's signature)
        """Standbys always replicate here: the database is this worker's alone."""
        return True

    def _is_fenced(self, partition: int, what: str) -> bool:
        if partition in self._fenced:
            logger.warning("ignored a %s for partition %d of %s: revoked here", what, partition, self.table_name)
            return True
        return False

    # -- the key index (lookups without a current event) -----------------------------------

    def _event_partition(self) -> int | None:
        event = current_event()
        if event is None or self.table.is_global or self.table.use_partitioner:
            return None
        return int(event.message.partition)

    def _key_index(self) -> dict[bytes, int]:
        if self._index is None:
            started = time.monotonic()
            index: dict[bytes, int] = {}
            for raw in self.db.keys():  # noqa: SIM118 (an Rdict iterates its keys only through keys())
                partition, key = split_key(cast(bytes, raw))
                if key is not None:
                    index[key] = partition
            self._index = index
            logger.info("indexed %d keys of %s in %.3f s", len(index), self.table_name, time.monotonic() - started)
        return self._index

    def _index_write(self, key: bytes, partition: int, *, present: bool) -> None:
        if self._index is None:
            return
        if present:
            self._index[key] = partition
        elif self._index.get(key) == partition:
            del self._index[key]

    def _partition_of(self, key: bytes) -> int | None:
        partition = self._event_partition()
        return partition if partition is not None else self._key_index().get(key)

    # -- the mapping ------------------------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        partition = self._partition_of(key)
        if partition is None:
            return None
        value: bytes | None = self.db.get(data_key(partition, key))
        return value

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def _set(self, key: bytes, value: bytes | None) -> None:
        event = current_event()
        if event is None:
            # As in Faust's store: the event names the partition (and the changelog partition).
            raise RuntimeError(f"a write to table {self.table_name} needs a current event to pick its partition")
        partition = int(event.message.partition)
        if self._is_fenced(partition, "write"):
            return
        if value is None:
            self.db.delete(data_key(partition, key))
        else:
            self.db.put(data_key(partition, key), value)
        self._index_write(key, partition, present=value is not None)

    def _del(self, key: bytes) -> None:
        partition = self._partition_of(key)
        if partition is None:
            return
        self.db.delete(data_key(partition, key))
        self._index_write(key, partition, present=False)

    def _active_partitions(self) -> set[int] | None:
        """The partitions iteration covers: this worker's actives (None: all, for a global table)."""
        if self.table.is_global:
            return None
        topic = self.table.changelog_topic_name  # type: ignore[attr-defined]
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def _iteritems(self) -> Iterator[tuple[bytes, bytes]]:
        actives = self._active_partitions()
        for raw, value in self.db.items():
            partition, key = split_key(cast(bytes, raw))
            if key is not None and (actives is None or partition in actives):
                yield key, value

    def _iterkeys(self) -> Iterator[bytes]:
        for key, _ in self._iteritems():
            yield key

    def _itervalues(self) -> Iterator[bytes | None]:
        for _, value in self._iteritems():
            yield value

    def _size(self) -> int:
        return sum(1 for _ in self._iteritems())

    def _clear(self) -> None:
        # As Faust's store: clearing local state without changelog tombstones would only
        # come back at the next restore.
        raise NotImplementedError("a changelog-backed table cannot be cleared locally")

    async def backup_partition(
        self,
        tp: TP | int,
        flush: bool = True,
        purge: bool = False,
        keep: int = 1,
    ) -> None:
        """Not supported (as in Faust's store with rocksdict): the changelog is the backup."""
        raise NotImplementedError("backups are not supported: the changelog is the backup")

    def restore_backup(
        self,
        tp: TP | int,
        latest: bool = True,
        backup_id: int = 0,
    ) -> None:
        """Not supported (as in Faust's store with rocksdict): restore from the changelog."""
        raise NotImplementedError("backups are not supported: state restores from the changelog")

    def reset_state(self) -> None:
        """Remove every partition's local state (``faust reset``); the changelog is untouched."""
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
        self._index = None
        self._fenced.clear()
        shutil.rmtree(self.path, ignore_errors=True)
