"""The whole-batch fast paths of :func:`pipeline.core.codec.decode_batch`.

A producer sends batches of one kind: plain JSON numbers, float64 blocks, or flat
JSON arrays. Such a batch, well formed, is decoded in one go here, with no Python
work per number and a few numpy calls per batch rather than per message; the kind
is told from the first value's first bytes, so each kind pays only for its own
checks. Anything else (a mixed batch, a bad value) gets None back and takes
:mod:`pipeline.core.codec`'s careful path, which names every rejection: each path
here accepts a batch only when decoding each value alone would give the same
numbers and no rejection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import simdjson

__all__ = ["FLOAT64_MAGIC", "NUMERIC_JSON_BYTES", "SCALAR_FAST_PATH_BYTES", "decode_whole"]

logger = logging.getLogger(__name__)

FLOAT64_MAGIC = b"DMF8"
"""Prefix of a packed little-endian float64 block (JSON can never start with ``D``)."""

NUMERIC_JSON_BYTES = b"0123456789+-.eE, \t\r\n"
"""Bytes that can appear in a JSON number or an array of numbers. A value made of
only these (with one leading ``[`` and one trailing ``]``) is a flat numeric
array: no strings, booleans, nulls, objects or nesting can hide in it."""
SCALAR_FAST_PATH_BYTES = 64
"""Values up to this size may be JSON scalars and join the one-parse fast path."""
# Arrays are joined and parsed at most about this many bytes at a time.
_JOINED_ARRAYS_BYTES = 1 << 20

FloatArray = npt.NDArray[np.float64]


class _ThreadParser(threading.local):
    """One simdjson parser per thread: a parser reuses its buffers between documents and is not thread-safe."""

    def __init__(self) -> None:
        self.parser = simdjson.Parser()


_parsers = _ThreadParser()


def decode_whole(values: Sequence[bytes | None], max_value_bytes: int, accept_infinity: bool) -> FloatArray | None:
    """The numbers of a non-empty batch of one well-formed kind, else None (decode it value by value)."""
    whole = _decode_all_scalars(values, max_value_bytes)
    if whole is None:
        whole = _decode_all_blocks(values, max_value_bytes, accept_infinity)
    if whole is None:
        whole = _decode_all_arrays(values, max_value_bytes)
    return whole


def _decode_all_scalars(values: Sequence[bytes | None], max_value_bytes: int) -> FloatArray | None:
    """The numbers of a batch made only of well-formed JSON scalars, else None.

    The whole batch is one join, one ``translate`` check and one parse, with no
    Python work per value: single-number messages are the most common input and
    the most expensive per number.

    Cheap evidence comes first, so that float64 blocks and JSON arrays never pay
    for the join and the scan of every byte (about 7 ns a number, against 25 ns
    for the KLL update that follows): a first value that cannot begin a number
    (``D`` of the magic, ``[``), or any value longer than this path takes, sends
    the batch on at once. What passes is scalars, or a rare short block or array
    among them, which the ``translate`` check then catches.
    """
    if not _may_be_all_scalars(values, max_value_bytes):
        return None
    joined = b",".join(values)  # type: ignore[arg-type]  # no None: len() took every value
    # Brackets, letters and quotes fail the check, so arrays, float64 blocks and
    # anything that is not a plain number take the careful path.
    if joined.translate(None, NUMERIC_JSON_BYTES):
        return None
    array = _parse_flat_array(b"[" + joined + b"]")  # None: e.g. an empty value (two commas in a row) or "1.2.3"
    # Equal lengths prove no value held a comma that split it into two numbers.
    if array is None or array.size != len(values):
        return None
    return array if np.isfinite(array).all() else None


def _decode_all_blocks(
    values: Sequence[bytes | None], max_value_bytes: int, accept_infinity: bool
) -> FloatArray | None:
    """The numbers of a batch made only of well-formed float64 blocks of accepted numbers, else None.

    One copy of every payload into one buffer and one finiteness check for the
    batch, instead of four numpy calls per block (a few microseconds each, several
    ns a number at 1,000 numbers a block). Anything else takes the careful path,
    which then names each bad block or number.
    """
    first = values[0]
    if not first or first[:4] != FLOAT64_MAGIC:
        return None
    payloads: list[memoryview] = []
    for value in values:
        if not (value and value[:4] == FLOAT64_MAGIC and 4 < len(value) <= max_value_bytes and len(value) % 8 == 4):
            return None
        payloads.append(memoryview(value)[4:])
    # A bytearray, so the array owns writable memory like the careful path's copies.
    array = np.frombuffer(bytearray().join(payloads), dtype="<f8")
    accepted = not np.isnan(array).any() if accept_infinity else np.isfinite(array).all()
    return array if accepted else None


def _decode_all_arrays(values: Sequence[bytes | None], max_value_bytes: int) -> FloatArray | None:
    """The numbers of a batch made only of flat JSON arrays of finite numbers, else None.

    The arrays are joined into one (the first's ``[``, every array's inside, the
    last's ``]``): one copy, one search for an inner ``[`` and one parse for the batch,
    instead of two copies, a check, a parse and a conversion per message.
    """
    first = values[0]
    if not first or first[:1] != b"[":
        return None
    views: list[memoryview] = []
    for value in values:
        if not (value and value[:1] == b"[" and value[-1:] == b"]" and len(value) <= max_value_bytes):
            return None
        views.append(memoryview(value))
    # Parsed a part at a time: one list of a million floats outgrows the CPU's caches
    # and costs more than the calls it saves.
    chunks: list[FloatArray] = []
    start = size = 0
    for end, view in enumerate(views, 1):
        size += len(view)
        if size >= _JOINED_ARRAYS_BYTES or end == len(views):
            array = _parse_joined_arrays(views[start:end])
            if array is None:
                return None
            chunks.append(array)
            start, size = end, 0
    return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]


def _parse_joined_arrays(views: list[memoryview]) -> FloatArray | None:
    """The numbers of flat arrays of finite numbers, joined into one and parsed once, else None."""
    if len(views) == 1:
        joined = bytes(views[0])
    else:
        joined = b",".join([views[0][:-1], *(view[1:-1] for view in views[1:-1]), views[-1][1:]])
    # No nesting: simdjson's buffer would flatten an inner array into its numbers. Strings,
    # literals and objects need no scan: simdjson refuses to give them as doubles (a byte
    # scan for them cost a fifth of the decode). An empty array leaves an empty element
    # (",,", "[,", ",]"), which does not parse, and a comma cannot join two messages'
    # numbers into one: each message parses alone.
    if joined.find(b"[", 1) >= 0:
        return None
    array = _parse_flat_array(joined)  # None: e.g. "1e400" or "[1,]"
    if array is None or not array.size:
        return None  # a lone "[]": rejected as empty by the careful path
    return array if np.isfinite(array).all() else None


def _parse_flat_array(document: bytes) -> FloatArray | None:
    """The numbers of a JSON array of numbers, none of them nested (the caller made sure), else None.

    simdjson writes the doubles straight into one buffer, with no Python float per number:
    orjson's list of floats and its conversion to an array cost 4-5 times the parse. Its
    numbers are correctly rounded, like orjson's. What it refuses (a number beyond a double's
    range, an integer beyond 64 bits, a stray comma) is decoded value by value by the careful
    path, which names the reason or, for the big integer, takes it as orjson does.
    """
    try:
        parsed = _parsers.parser.parse(document)
        if not isinstance(parsed, simdjson.Array):
            return None
        return np.frombuffer(parsed.as_buffer(of_type="d"), dtype=np.float64)
    except (ValueError, TypeError, RuntimeError):
        return None


def _may_be_all_scalars(values: Sequence[bytes | None], max_value_bytes: int) -> bool:
    """Whether the batch may be all scalars, from its first byte and its values' lengths (no copy, no scan)."""
    first = values[0]
    if not first or first[:1].translate(None, NUMERIC_JSON_BYTES):
        return False  # empty, a float64 block, an array, or not a number
    try:
        longest = max(map(len, values))  # type: ignore[arg-type]  # a None value raises TypeError
    except TypeError:
        return False
    return longest <= min(SCALAR_FAST_PATH_BYTES, max_value_bytes)
