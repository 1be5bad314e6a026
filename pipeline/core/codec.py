"""Decoding of input messages into float64 arrays, a whole batch at a time.

A message value on the input topic is one of:

* a JSON number, e.g. ``3.25``;
* a JSON array of numbers (a batch), e.g. ``[1, 2.5, -3e4]``;
* a packed block of little-endian IEEE-754 float64 values behind the 4-byte
  magic prefix :data:`FLOAT64_MAGIC` (``b"DMF8"``).

Anything else is rejected with a reason from :class:`Reason`. A batch with
some bad elements keeps its good numbers and reports the bad ones.

The fast paths do no per-number Python work. A batch of one well-formed kind is
decoded whole (:mod:`pipeline.core.codec_whole`), its kind told by its first
value's first bytes: plain JSON numbers or flat arrays are joined, checked for
stray characters by one ``bytes.translate`` and parsed by one ``orjson.loads``;
float64 blocks are copied into one buffer. Otherwise runs of plain JSON messages
are still joined and parsed together, each array is checked by one
``translate``, and finiteness is checked by numpy.
"""

from __future__ import annotations

import enum
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import orjson

from pipeline.core.codec_whole import FLOAT64_MAGIC, NUMERIC_JSON_BYTES, SCALAR_FAST_PATH_BYTES, decode_whole

__all__ = [
    "FLOAT64_MAGIC",
    "BadElement",
    "CodecOptions",
    "DecodedBatch",
    "Reason",
    "Rejection",
    "decode_batch",
    "decode_value",
    "encode_float64_block",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
_EMPTY = np.empty(0, dtype=np.float64)


class Reason(enum.StrEnum):
    """Why a value (or an element of a batch) was rejected."""

    EMPTY = "empty"
    MALFORMED_JSON = "malformed_json"
    NOT_A_NUMBER = "not_a_number"
    NESTED_ARRAY = "nested_array"
    NON_FINITE = "non_finite"
    BAD_FLOAT64_BLOCK = "bad_float64_block"
    TOO_LARGE = "too_large"
    PARTIAL_BATCH = "partial_batch"


@dataclass(frozen=True)
class CodecOptions:
    """How strict decoding is."""

    accept_infinity: bool = False
    """Accept +-inf: from float64 blocks, or JSON numbers that overflow a double (``1e400``).

    Off by default: one infinity makes every mean-like statistic meaningless and
    usually means a broken source. NaN is always rejected (it has no rank)."""
    max_value_bytes: int = 8 * 1024 * 1024
    """Values larger than this are rejected as ``too_large`` before parsing."""


@dataclass(frozen=True)
class BadElement:
    """One rejected element of an otherwise usable batch."""

    index: int
    """Position of the element in the message's array or float64 block."""
    reason: Reason
    """Why the element was rejected."""


@dataclass(frozen=True)
class Rejection:
    """A message that was rejected whole or in part."""

    index: int
    """Position of the message in the batch handed to :func:`decode_batch`."""
    reason: Reason
    """The message's reason (``partial_batch`` when only some elements were bad)."""
    detail: str
    """Human-readable detail, e.g. the parser's message."""
    bad_elements: tuple[BadElement, ...] = ()
    """For a partial batch: which elements were dropped and why."""
    accepted: int = 0
    """How many numbers of this message were kept."""

    @property
    def rejected_count(self) -> int:
        """Numbers (or whole messages) this rejection drops, for counters."""
        return len(self.bad_elements) if self.bad_elements else 1


@dataclass(frozen=True)
class DecodedBatch:
    """The numbers of a batch of messages, plus what was rejected."""

    values: FloatArray
    """Every accepted number, in message order."""
    rejections: tuple[Rejection, ...] = field(default_factory=tuple)
    """One entry per message that was rejected whole or in part."""


def encode_float64_block(values: Sequence[float] | FloatArray) -> bytes:
    """Pack numbers as a float64 block message value (the inverse of decoding)."""
    return FLOAT64_MAGIC + np.asarray(values, dtype="<f8").tobytes()


def decode_batch(values: Sequence[bytes | None], options: CodecOptions = CodecOptions()) -> DecodedBatch:
    """Decode many message values at once.

    The common case, a batch of one well-formed kind (what a producer sends), is
    decoded whole; only when that fails does each value get its own parse.
    """
    if not values:
        return DecodedBatch(_EMPTY)
    whole = decode_whole(values, options.max_value_bytes, options.accept_infinity)
    if whole is not None:
        return DecodedBatch(whole)
    chunks: list[FloatArray] = []
    rejections: list[Rejection] = []
    json_run: list[int] = []
    for index, value in enumerate(values):
        short = len(value or b"") <= min(SCALAR_FAST_PATH_BYTES, options.max_value_bytes)
        if value and short and value[:4] != FLOAT64_MAGIC and value[0:1] != b"[":
            json_run.append(index)
            continue
        if json_run:
            _decode_json_scalars(values, json_run, options, chunks, rejections)
            json_run = []
        array, rejection = decode_value(value, options, index)
        if array.size:
            chunks.append(array)
        if rejection is not None:
            rejections.append(rejection)
    if json_run:
        _decode_json_scalars(values, json_run, options, chunks, rejections)
    merged = np.concatenate(chunks) if len(chunks) > 1 else (chunks[0] if chunks else _EMPTY)
    return DecodedBatch(merged, tuple(rejections))


def decode_value(
    value: bytes | None, options: CodecOptions = CodecOptions(), index: int = 0
) -> tuple[FloatArray, Rejection | None]:
    """Decode one message value; return its numbers and its rejection, if any."""
    if not value:
        return _EMPTY, Rejection(index, Reason.EMPTY, "empty message value")
    if len(value) > options.max_value_bytes:
        detail = f"{len(value)} bytes exceeds max_value_bytes={options.max_value_bytes}"
        return _EMPTY, Rejection(index, Reason.TOO_LARGE, detail)
    if value[:4] == FLOAT64_MAGIC:
        return _decode_float64_block(value, options, index)
    return _decode_json(value, options, index)


def _decode_json_scalars(
    values: Sequence[bytes | None],
    indices: list[int],
    options: CodecOptions,
    chunks: list[FloatArray],
    rejections: list[Rejection],
) -> None:
    joined = b"[" + b",".join(values[i] or b"" for i in indices) + b"]"
    if not joined[1:-1].translate(None, NUMERIC_JSON_BYTES):
        try:
            parsed = orjson.loads(joined)
        except orjson.JSONDecodeError:
            parsed = None
        # Equal lengths prove no value held a comma that split it into two.
        if parsed is not None and len(parsed) == len(indices):
            array = np.asarray(parsed, dtype=np.float64)
            if np.isfinite(array).all():
                chunks.append(array)
                return
    for i in indices:
        array, rejection = decode_value(values[i], options, i)
        if array.size:
            chunks.append(array)
        if rejection is not None:
            rejections.append(rejection)


def _decode_float64_block(value: bytes, options: CodecOptions, index: int) -> tuple[FloatArray, Rejection | None]:
    payload = memoryview(value)[4:]
    if len(payload) == 0 or len(payload) % 8:
        detail = f"float64 block payload of {len(payload)} bytes is not a positive multiple of 8"
        return _EMPTY, Rejection(index, Reason.BAD_FLOAT64_BLOCK, detail)
    array = np.frombuffer(payload, dtype="<f8").astype(np.float64)
    return _keep_finite(array, options, index)


def _decode_json(value: bytes, options: CodecOptions, index: int) -> tuple[FloatArray, Rejection | None]:
    stripped = value.strip()
    flat = stripped[:1] == b"[" and stripped[-1:] == b"]" and stripped.count(b"[") == 1
    if flat and not stripped[1:-1].translate(None, NUMERIC_JSON_BYTES):
        # Flat array of numbers only: one parse, one conversion.
        try:
            return _parsed_array(_loads(stripped), options, index)
        except ValueError as exc:
            return _EMPTY, Rejection(index, Reason.MALFORMED_JSON, str(exc))
    try:
        parsed = _loads(value)
    except ValueError as exc:
        return _EMPTY, Rejection(index, Reason.MALFORMED_JSON, str(exc))
    if isinstance(parsed, bool) or not isinstance(parsed, (int, float, list)):
        return _EMPTY, Rejection(index, Reason.NOT_A_NUMBER, f"JSON {type(parsed).__name__} is not a number")
    if isinstance(parsed, list):
        return _mixed_array(parsed, options, index)
    number = float(parsed)
    return _keep_finite(np.array([number], dtype=np.float64), options, index)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _loads(value: bytes) -> object:
    """Parse JSON with orjson; overflowing numbers (``1e400``) become +-inf.

    orjson refuses a number that overflows a double. The standard library parses
    it as infinity, so the slow path runs only for such rare values and the
    element is then rejected as ``non_finite`` rather than the whole message.
    """
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        if "infinity" not in str(exc):
            raise ValueError(str(exc)) from None
    try:
        # parse_int=float: an integer beyond a double's range becomes inf (then
        # rejected as non_finite) instead of raising OverflowError later.
        return json.loads(value, parse_constant=_reject_constant, parse_int=float)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def _parsed_array(parsed: object, options: CodecOptions, index: int) -> tuple[FloatArray, Rejection | None]:
    if not isinstance(parsed, list) or not parsed:
        return _EMPTY, Rejection(index, Reason.EMPTY, "empty JSON array")
    return _keep_finite(np.asarray(parsed, dtype=np.float64), options, index)


def _mixed_array(items: list[object], options: CodecOptions, index: int) -> tuple[FloatArray, Rejection | None]:
    """An array that holds something other than numbers: keep the numbers, name the rest."""
    if not items:
        return _EMPTY, Rejection(index, Reason.EMPTY, "empty JSON array")
    good: list[float] = []
    bad: list[BadElement] = []
    for position, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, (int, float, list)):
            bad.append(BadElement(position, Reason.NOT_A_NUMBER))
        elif isinstance(item, list):
            bad.append(BadElement(position, Reason.NESTED_ARRAY))
        elif not (math.isfinite(item) or (options.accept_infinity and math.isinf(item))):
            bad.append(BadElement(position, Reason.NON_FINITE))
        else:
            good.append(float(item))
    array = np.asarray(good, dtype=np.float64)
    return array, _partial(index, bad, len(items), array.size)


def _keep_finite(array: FloatArray, options: CodecOptions, index: int) -> tuple[FloatArray, Rejection | None]:
    finite = np.isfinite(array)
    if options.accept_infinity:
        finite |= np.isinf(array)
    if finite.all():
        return array, None
    kept = array[finite]
    bad = [BadElement(int(i), Reason.NON_FINITE) for i in np.flatnonzero(~finite)]
    return kept, _partial(index, bad, array.size, kept.size)


def _partial(index: int, bad: list[BadElement], total: int, kept: int) -> Rejection | None:
    if not bad:
        return None
    reasons = sorted({b.reason.value for b in bad})
    if total == 1:
        # A single number: the message itself is the bad element.
        return Rejection(index, bad[0].reason, f"value rejected: {reasons[0]}")
    detail = f"{len(bad)} of {total} elements rejected ({', '.join(reasons)})"
    reason = Reason.PARTIAL_BATCH if kept else (bad[0].reason if len(reasons) == 1 else Reason.PARTIAL_BATCH)
    return Rejection(index, reason, detail, tuple(bad), kept)
