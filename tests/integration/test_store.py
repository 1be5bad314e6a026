"""The one-database state store on a real broker: each partition's state and changelog
offset survive a restart, a revoke drops the partition, and a re-assignment restores it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import rocksdict

from pipeline.core.sketch import ShardState
from pipeline.core.store_keys import decode_offset, split_key
from pipeline.kafka.generate import Distribution, MessageFormat, generate
from tests.integration.harness import Deployment, WorkerProcess

pytestmark = pytest.mark.integration

PARTITIONS = 6
TABLE = "shard-sketches"


def _round_robin(sequence: int) -> int:
    return (sequence - 1) % PARTITIONS


def _local_state(data_dir: Path) -> dict[int, tuple[dict[bytes, bytes], int | None]]:
    """A stopped worker's one database, read directly: partition -> (table entries, persisted offset)."""
    databases = sorted(path for path in data_dir.rglob(f"{TABLE}*.db") if path.is_dir())
    assert [path.name for path in databases] == [f"{TABLE}.db"], f"expected one database, found {databases}"
    db = rocksdict.Rdict(
        str(databases[0]), options=rocksdict.Options(raw_mode=True), access_type=rocksdict.AccessType.read_only()
    )
    state: dict[int, tuple[dict[bytes, bytes], int | None]] = {}
    try:
        for raw, value in db.items():
            assert isinstance(raw, bytes)  # raw mode: bytes keys (the stubs allow any key type)
            partition, key = split_key(raw)
            entries, offset = state.get(partition, ({}, None))
            if key is None:
                offset = decode_offset(value)
            else:
                entries[key] = value
            state[partition] = (entries, offset)
    finally:
        db.close()
    return state


def _changelog(deployment: Deployment) -> dict[int, dict[int, bytes]]:
    """Every record of the shard table's changelog: partition -> offset -> value.

    Offsets are positions: a topic written without transactions has no gaps, and the
    cleaner never compacts the active segment (a segment rolls after 1 GiB or 7 days).
    """
    records: dict[int, dict[int, bytes]] = {p: {} for p in range(PARTITIONS)}
    for partition, key, value in deployment.read_topic(f"{deployment.settings.app_id}-{TABLE}-changelog", PARTITIONS):
        assert key == str(partition).encode()
        assert value is not None
        records[partition][len(records[partition])] = value
    return records


def _assert_consistent(
    state: dict[int, tuple[dict[bytes, bytes], int | None]], changelog: dict[int, dict[int, bytes]]
) -> None:
    """Each partition kept holds its shard's entry exactly as of its persisted offset."""
    for partition, (entries, offset) in state.items():
        assert offset is not None, f"partition {partition}: entries without an offset"
        assert offset in changelog[partition], f"partition {partition}: offset {offset} is not in the changelog"
        assert entries == {str(partition).encode(): changelog[partition][offset]}, f"partition {partition}"


def _assert_complete(data_dir: Path, deployment: Deployment, n: int) -> None:
    """Every partition, with the changelog's last offset and value, and the shards' counts add up to n."""
    state, changelog = _local_state(data_dir), _changelog(deployment)
    assert sorted(state) == list(range(PARTITIONS))
    for partition, (_, offset) in state.items():
        assert offset == max(changelog[partition]), f"partition {partition} behind its changelog"
    _assert_consistent(state, changelog)
    assert sum(ShardState.from_bytes(entries[str(p).encode()]).n for p, (entries, _) in state.items()) == n


def test_each_partition_survives_a_restart_and_a_revoke_is_restored_from_the_changelog(
    deploy: Callable[..., Deployment],
) -> None:
    deployment = deploy(PARTITIONS)
    home = deployment.tmp / "home"
    values = generate(Distribution.UNIFORM, 80_000, seed=31)
    chunks = [values[i * 20_000 : (i + 1) * 20_000] for i in range(4)]
    total = 0

    def feed(chunk_index: int) -> None:
        nonlocal total
        deployment.produce(chunks[chunk_index], MessageFormat.FLOAT64, 500, partition=_round_robin)
        total += chunks[chunk_index].size
        deployment.wait_for_n(total)

    # One worker owns every shard; a graceful stop keeps its database.
    first = deployment.worker("first", data_dir=home)
    feed(0)
    assert first.stop() == 0
    _assert_complete(home, deployment, total)

    # A restart on the same directory resumes from the stored offsets and keeps counting.
    again = deployment.worker("again", data_dir=home)
    feed(1)

    # Two more workers join: with one standby replica per shard, some partitions now
    # have neither their active nor their standby here, and are revoked.
    others = [deployment.worker("second"), deployment.worker("third")]
    for worker in others:
        worker.wait_until_owning()
    feed(2)
    assert again.stop() == 0
    assert "dropped the local state" in again.log_path.read_text(errors="replace"), again.log_tail()
    state = _local_state(home)
    dropped = set(range(PARTITIONS)) - set(state)
    assert dropped, f"no partition was revoked from {again.name}: the test proves nothing"
    _assert_consistent(state, _changelog(deployment))

    # Alone again: the dropped partitions restore from the changelog, the rest from their offsets.
    for worker in others:
        assert worker.stop() == 0
    last: WorkerProcess = deployment.worker("last", data_dir=home)
    feed(3)
    assert last.stop() == 0
    _assert_complete(home, deployment, total)
