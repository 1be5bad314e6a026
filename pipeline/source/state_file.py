"""A source's state file: one RocksDB database (rocksdict, as the shards' store) holding one value.

RocksDB rather than a plain file for the same reasons as the shards: a write is
atomic and durable through its write-ahead log, so a kill -9 between two saves
leaves the previous save whole, never half of one. It also holds a lock on the
directory, so two processes cannot run the same source at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import rocksdict

__all__ = ["SourceStateFile", "StateFileError"]

logger = logging.getLogger(__name__)

_KEY = b"state"


class StateFileError(RuntimeError):
    """The state file cannot be opened (in use by another process, or not a source's state)."""


class SourceStateFile:
    """The latest saved state of one source."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        """The database's directory."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            self._db: rocksdict.Rdict | None = rocksdict.Rdict(str(self.path), options=options)
        except Exception as exc:  # rocksdict raises a bare Exception for a held lock or a foreign directory
            raise StateFileError(
                f"cannot open the source state file {self.path}: {exc} (is another process running this source?)"
            ) from None

    def load(self) -> bytes | None:
        """The saved state (None: nothing saved yet)."""
        db = self._require()
        value = db.get(_KEY)
        return None if value is None else bytes(value)

    def save(self, state: bytes) -> None:
        """Replace the saved state, durably (synced to disk before it returns)."""
        db = self._require()
        write = rocksdict.WriteOptions()
        write.sync = True
        db.put(_KEY, state, write_opt=write)

    def close(self) -> None:
        """Close the database (idempotent)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def _require(self) -> rocksdict.Rdict:
        if self._db is None:
            raise StateFileError(f"the source state file {self.path} is closed")
        return self._db
