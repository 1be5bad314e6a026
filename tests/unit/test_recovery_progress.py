"""The O(1) recovery check answers exactly as Faust's full scan, whatever the maps do between checks."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.recovery_progress import RemainingCheck, remaining


def _faust(highwaters: Counter[int], offsets: Counter[int]) -> bool:
    # faust.tables.recovery.Recovery.need_recovery and active_remaining, verbatim but for names.
    return any(
        v > 0
        for v in Counter(
            {tp: high - offsets[tp] for tp, high in highwaters.items() if high is not None and offsets[tp] is not None}
        ).values()
    )


_offset = st.one_of(st.none(), st.integers(-1, 20))
_step = st.one_of(
    st.tuples(st.just("read"), st.integers(0, 15), st.integers(0, 5)),  # an offset moves on
    st.tuples(st.just("set"), st.integers(0, 15), _offset),  # any offset, even back
    st.tuples(st.just("high"), st.integers(0, 15), _offset),  # a highwater changes in place
    st.tuples(st.just("drop"), st.integers(0, 15), st.none()),  # a partition leaves
)


@settings(max_examples=400, deadline=None)
@given(
    highwaters_given=st.dictionaries(st.integers(0, 15), _offset, max_size=16),
    offsets_given=st.dictionaries(st.integers(0, 15), _offset, max_size=16),
    steps=st.lists(_step, max_size=60),
)
def test_it_answers_as_faust_s_full_scan_after_every_change(
    highwaters_given: dict[int, int | None],
    offsets_given: dict[int, int | None],
    steps: list[tuple[str, int, int | None]],
) -> None:
    # Faust keeps both maps as Counters (a missing offset reads 0) and may hold None in them.
    highwaters: Counter[int] = Counter(highwaters_given)
    offsets: Counter[int] = Counter(offsets_given)
    check: RemainingCheck[int] = RemainingCheck()
    assert check.any_remaining(highwaters, offsets) == _faust(highwaters, offsets)
    for kind, tp, value in steps:
        if kind == "read":
            current = offsets.get(tp)
            offsets[tp] = (current if current is not None else -1) + (value or 0)
        elif kind == "set":
            offsets[tp] = value  # type: ignore[assignment]
        elif kind == "high":
            highwaters[tp] = value  # type: ignore[assignment]
        else:
            highwaters.pop(tp, None)
        assert check.any_remaining(highwaters, offsets) == _faust(highwaters, offsets), (highwaters, offsets)


def test_a_recovery_round_looks_at_every_partition_twice_not_once_per_record() -> None:
    partitions = 4096
    highwaters: Counter[int] = Counter(dict.fromkeys(range(partitions), 4))
    offsets: Counter[int] = Counter(dict.fromkeys(range(partitions), -1))
    check: RemainingCheck[int] = RemainingCheck()
    records = 0
    for tp in range(partitions):
        for offset in range(5):
            offsets[tp] = offset
            records += 1
            assert check.any_remaining(highwaters, offsets) == (tp < partitions - 1 or offset < 4)
    assert records == 5 * partitions
    # One scan to start and one to confirm the end: not one per record.
    assert check.full_scans == 2


def test_one_partition_s_rule() -> None:
    assert remaining(5, 3)
    assert not remaining(5, 5)
    assert not remaining(None, 3)
    assert not remaining(5, None)
