"""Forged and corrupt records on ``sketches`` (and oversized ones on ``numbers``) against a real worker.

Each forgery must land on ``dead-letters`` with its reason and be counted per
reason in ``/stats``; none may crash the worker or change the published
estimate, and genuine snapshots after them must still be merged with an exact n.
(Garbage on ``numbers`` is covered by test_pipeline.py; only oversized and deeply
nested values are added here.)
"""

from __future__ import annotations

import math
import struct
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from pipeline.core.dead_letter import DeadLetter
from pipeline.core.envelope import pack_envelope, unpack_envelope
from pipeline.core.exact import check_rank
from pipeline.core.wire import SNAPSHOT_VERSION, MedianRecord, ShardProgress, SketchSnapshot
from pipeline.kafka.clients import producer
from pipeline.kafka.follow import wait_for_record
from pipeline.kafka.generate import MessageFormat
from pipeline.kafka.produce import produce_values
from tests.integration.harness import Deployment

pytestmark = pytest.mark.integration

MAGIC = b"DMSK"
PARTITIONS = 2
MAX_VALUE_BYTES = 4096


def _forgeries(genuine: SketchSnapshot) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, expected dead-letter reason) for each forged ``sketches`` record, built from a real one."""
    data = genuine.to_bytes()
    header = unpack_envelope(data, MAGIC, SNAPSHOT_VERSION).header
    sketch = genuine.sketch_bytes
    key = str(genuine.shard).encode()

    def envelope(sketch_bytes: bytes = sketch, version: int = SNAPSHOT_VERSION, **fields: object) -> bytes:
        return pack_envelope(MAGIC, version, {**header, **fields}, sketch_bytes)

    def patched(offset: int, fmt: str, value: object) -> bytes:
        forged = bytearray(sketch)
        struct.pack_into(fmt, forged, offset, value)
        return bytes(forged)

    absurd = 10**18
    random_bytes = np.random.default_rng(6).bytes(300)
    return [
        (key, envelope(version=SNAPSHOT_VERSION + 1), "snapshot_unsupported_version"),
        (key, data[:20], "snapshot_truncated"),
        (key, b"XX" + random_bytes, "snapshot_bad_magic"),
        (key, envelope(n=absurd, last_offset=absurd), "snapshot_inconsistent"),
        # The sketch's own n patched too: only the weight of its items gives it away. Merged, it would
        # also have frozen the shard (no later snapshot has a higher offset).
        (key, envelope(patched(8, "<Q", absurd), n=absurd, last_offset=absurd), "snapshot_inconsistent"),
        (key, envelope(n=-genuine.n), "snapshot_bad_header"),
        (key, envelope(last_offset=-7), "snapshot_bad_header"),
        (key, envelope(last_offset=-1), "snapshot_implausible_count"),
        (key, envelope(patched(len(sketch) - 8, "<d", math.nan)), "snapshot_non_finite"),
        (b"1", data, "snapshot_key_mismatch"),
        (str(PARTITIONS).encode(), envelope(shard=PARTITIONS), "snapshot_unknown_shard"),
        (b"1000000", envelope(shard=1_000_000), "snapshot_unknown_shard"),
        (b"9.progress", ShardProgress(9, 0, 10, 10, genuine.ts).to_bytes(), "snapshot_unknown_shard"),
    ]


def _medians(deployment: Deployment) -> list[MedianRecord]:
    topic = deployment.settings.topic_medians
    return [MedianRecord.from_json(value) for _, _, value in deployment.read_topic(topic) if value]


def _wait_for_dead_letters(deployment: Deployment, count: int, timeout_s: float = 30.0) -> list[DeadLetter]:
    deadline = time.monotonic() + timeout_s
    while True:
        letters = deployment.dead_letters()
        if len(letters) >= count or time.monotonic() > deadline:
            return letters
        time.sleep(0.5)


def test_forged_sketches_are_dead_lettered_by_reason_and_never_change_the_estimate(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(PARTITIONS, max_value_bytes=str(MAX_VALUE_BYTES))
    worker = deployment.worker()
    settings = deployment.settings
    rng = np.random.default_rng(11)
    first = rng.normal(size=1000)
    deployment.produce(first, MessageFormat.FLOAT64, 100, partition=lambda i: i % PARTITIONS)
    deployment.wait_for_n(first.size, timeout_s=90)
    time.sleep(1.0)  # let the last publish of this state land: the baseline is the latest record
    baseline = _medians(deployment)[-1]
    assert baseline.n == first.size

    # 1. Forgeries on sketches: each dead-lettered with its reason, the estimate untouched.
    forgeries = _forgeries(deployment.snapshots()[0])
    produce_values(producer(settings), settings.topic_sketches, [v for _, v, _ in forgeries],
                   key=lambda i: forgeries[i - 1][0])  # fmt: skip
    letters = _wait_for_dead_letters(deployment, len(forgeries))
    assert worker.alive, deployment.worker_logs()
    assert [(d.topic, d.value, d.reason) for d in sorted(letters, key=lambda d: d.offset)] == [
        (settings.topic_sketches, v, r) for _, v, r in forgeries
    ]
    assert all(d.detail for d in letters)
    time.sleep(0.5)  # a record the forgeries caused (there must be none) would be published by now
    for record in _medians(deployment):
        if record.ts >= baseline.ts:
            assert (record.n, record.shards, record.median, record.quantiles, record.rank_error) == (
                baseline.n, baseline.shards, baseline.median, baseline.quantiles, baseline.rank_error,
            ), record  # fmt: skip

    # 2. Hostile values on numbers: one over max_value_bytes, one nested 2,000 levels deep.
    hostile_numbers = [b"[" + b"1," * MAX_VALUE_BYTES + b"1]", b"[" * 2000 + b"]" * 2000]
    deployment.produce_raw(hostile_numbers, partition=1)
    letters = _wait_for_dead_letters(deployment, len(forgeries) + len(hostile_numbers))
    from_numbers = sorted((d for d in letters if d.topic == settings.topic_numbers), key=lambda d: d.offset)
    assert [(d.value, d.reason) for d in from_numbers] == list(
        zip(hostile_numbers, ["too_large", "malformed_json"], strict=True)
    )
    # The shard's state changed (its rejected count): a new record, with the same n.
    counted = wait_for_record(settings, lambda r: r.rejected == len(hostile_numbers), 30)
    assert counted is not None, deployment.worker_logs()
    assert counted.n == first.size
    expected = Counter(reason for _, _, reason in forgeries) + Counter({"too_large": 1, "malformed_json": 1})
    assert worker.stats()["rejected"] == dict(expected)

    # 3. Genuine snapshots still merge, of both shards, with n exact.
    second = rng.normal(loc=5.0, size=600)
    deployment.produce(second, MessageFormat.JSON_ARRAY, 100, partition=lambda i: i % PARTITIONS)
    record = deployment.wait_for_n(first.size + second.size, timeout_s=60)
    assert record.shards == PARTITIONS
    assert record.rejected == len(hostile_numbers)
    assert worker.alive
    # 4. A new aggregator rebuilds from sketches, forgeries and all still on the topic: its first
    # record must be the same estimate (the rebuild applies the same checks as the agent).
    assert worker.stop() == 0
    restarted = deployment.worker("restarted", data_dir=worker.data_dir)
    rebuilt = wait_for_record(settings, lambda r: r.ts > record.ts, 90)
    assert rebuilt is not None, deployment.worker_logs()
    assert (rebuilt.n, rebuilt.shards, rebuilt.rejected) == (record.n, record.shards, record.rejected)
    # The value itself may differ: merging KLL sketches compacts at random.
    check = check_rank(np.sort(np.concatenate([first, second])), 0.5, rebuilt.median.value)
    assert check.within(rebuilt.rank_bound), check
    assert restarted.alive
