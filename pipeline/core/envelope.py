"""A tiny binary envelope: magic, version, a JSON header and an opaque payload.

Snapshots and stored shard state carry a DataSketches sketch, which is binary.
Base64 inside JSON would cost a third more bytes on every snapshot, so the
sketch travels as raw bytes after a small, self-describing JSON header::

    magic (4 bytes) | version (u8) | header length (u32 LE) | header (JSON) | payload

The payload is the standard DataSketches serialization, untouched, so any
DataSketches user (Druid, Pinot, Spark, Java, C++) can merge it.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Envelope", "EnvelopeError", "pack_envelope", "unpack_envelope"]

logger = logging.getLogger(__name__)

_PREFIX = struct.Struct("<4sBI")
_MAX_HEADER_BYTES = 64 * 1024


class EnvelopeError(ValueError):
    """The bytes are not a well-formed envelope of the expected kind and version."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        """A short machine-readable reason, used as a dead-letter reason and counter label."""
        self.detail = detail
        """What exactly was wrong."""


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope."""

    version: int
    """The format version the writer used."""
    header: dict[str, Any]
    """The JSON header (always a JSON object)."""
    payload: bytes
    """The bytes after the header (a serialized sketch)."""


def pack_envelope(magic: bytes, version: int, header: dict[str, Any], payload: bytes) -> bytes:
    """Serialize ``header`` and ``payload`` behind ``magic`` and ``version``."""
    encoded = orjson.dumps(header)
    return _PREFIX.pack(magic, version, len(encoded)) + encoded + payload


def unpack_envelope(data: bytes, magic: bytes, supported_version: int) -> Envelope:
    """Parse an envelope, refusing the wrong magic, a newer version or a bad header."""
    if len(data) < _PREFIX.size:
        raise EnvelopeError("truncated", f"{len(data)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    found_magic, version, header_len = _PREFIX.unpack_from(data)
    if found_magic != magic:
        raise EnvelopeError("bad_magic", f"expected magic {magic!r}, found {found_magic!r}")
    if version != supported_version:
        newer = "newer than" if version > supported_version else "older than"
        raise EnvelopeError(
            "unsupported_version", f"version {version} is {newer} the supported version {supported_version}"
        )
    end = _PREFIX.size + header_len
    if header_len > _MAX_HEADER_BYTES or end > len(data):
        raise EnvelopeError("truncated", f"header of {header_len} bytes does not fit in {len(data)} bytes")
    try:
        header = orjson.loads(data[_PREFIX.size : end])
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError("bad_header", str(exc)) from None
    if not isinstance(header, dict):
        raise EnvelopeError("bad_header", f"header is a JSON {type(header).__name__}, not an object")
    return Envelope(version, header, bytes(data[end:]))
