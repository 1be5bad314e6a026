"""The exact audit's pure logic against numpy's exact answers on the same data."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import datasketches
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.core.audit import (
    AuditError,
    ServedEstimate,
    ServedQuantile,
    ShardChunk,
    ShardClaim,
    run_audit,
    sketch_hints,
)
from pipeline.core.selection import ExactSelector, RankCounter, exclusive_position, float_keys, key_value
from pipeline.core.sketch import QuantileBand, quantile_band

FloatArray = npt.NDArray[np.float64]
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0)


class ListSource:
    """Shards' numbers in memory, handed out in uneven chunks; counts the passes."""

    def __init__(self, shards: Mapping[int, FloatArray], chunk: int = 997, rejected: Mapping[int, int] = {}) -> None:
        self.shards = dict(shards)
        self.chunk = chunk
        self.rejected = dict(rejected)
        self.passes: list[int] = []

    def read(self, pass_number: int) -> Iterable[ShardChunk]:
        self.passes.append(pass_number)
        for shard, values in self.shards.items():
            yield ShardChunk(shard, values[:0], self.rejected.get(shard, 0))
            for start in range(0, values.size, self.chunk):
                yield ShardChunk(shard, values[start : start + self.chunk])

    def problems(self) -> Mapping[int, Sequence[str]]:
        return {}


def numpy_exact(data: FloatArray, q: float) -> float:
    """The exclusive-rank quantile, from numpy: inverted_cdf unless q*n is a whole number."""
    ordered = np.sort(data)
    n = data.size
    whole = math.isclose(q * n, round(q * n), abs_tol=1e-9)
    if whole:
        return float(ordered[min(round(q * n), n - 1)])
    return float(np.quantile(data, q, method="inverted_cdf"))


def select(
    data: FloatArray, positions: Sequence[int], max_values: int, bins: int, hints: Sequence[float] = ()
) -> list[float]:
    counter = RankCounter(hints)
    for start in range(0, data.size, 1013):
        counter.add(data[start : start + 1013])
    selector = ExactSelector(counter, positions, max_values, bins)
    # Each narrowing pass divides a 64-bit key range by the bin count; then one collecting pass.
    worst = math.ceil(64 / math.log2(bins)) + 1
    passes = 0
    while not selector.done:
        passes += 1
        assert passes <= worst, "more passes than the stated worst case"
        if not selector.begin_pass():
            break
        for start in range(0, data.size, 1013):
            selector.add(data[start : start + 1013])
        selector.end_pass()
    return [selector.value(p) for p in positions]


def claims_for(
    shards: Mapping[int, FloatArray], k: int = 200
) -> tuple[list[ShardClaim], datasketches.kll_doubles_sketch]:
    merged = datasketches.kll_doubles_sketch(k)
    claims = []
    for shard, values in shards.items():
        sketch = datasketches.kll_doubles_sketch(k)
        if values.size:
            sketch.update(values)
            merged.merge(sketch)
        error = float(sketch.normalized_rank_error(False))
        empty = sketch.is_empty()
        claims.append(
            ShardClaim(
                shard,
                int(sketch.n),
                0,
                math.nan if empty else sketch.get_min_value(),
                math.nan if empty else sketch.get_max_value(),
                quantile_band(sketch, 0.5, error).value,
                error,
                values.size - 1,
            )
        )
    return claims, merged


def estimate_of(sketch: datasketches.kll_doubles_sketch, quantiles: Sequence[float] = QUANTILES) -> ServedEstimate:
    error = float(sketch.normalized_rank_error(False))
    served = tuple(ServedQuantile(q, quantile_band(sketch, q, error)) for q in quantiles)
    return ServedEstimate("served", "test", int(sketch.n), error, served)


def test_exclusive_position_is_what_datasketches_serves_on_exact_data() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 10, 57, 200):
        data = rng.integers(0, 7, n).astype(np.float64)  # many duplicates
        sketch = datasketches.kll_doubles_sketch(200)
        sketch.update(data)
        assert not sketch.is_estimation_mode()
        ordered = np.sort(data)
        for q in [*QUANTILES, *rng.random(20).tolist(), 0.1, 0.3, 0.7]:
            assert ordered[exclusive_position(q, n)] == sketch.get_quantile(q), (n, q)


def test_exclusive_position_takes_q_as_its_decimal() -> None:
    # 0.9 * 10 is 9.000000000000002 in binary; the position must be 9, not 10 clamped.
    assert exclusive_position(0.9, 10) == 9
    assert exclusive_position(0.7, 10) == 7
    assert exclusive_position(1.0, 10) == 9
    assert exclusive_position(0.0, 10) == 0
    with pytest.raises(ValueError, match="empty"):
        exclusive_position(0.5, 0)


def test_float_keys_order_like_the_doubles_and_invert() -> None:
    rng = np.random.default_rng(2)
    special = [0.0, -0.0, math.inf, -math.inf, 1e300, -1e300, 5e-324, -5e-324, 1.0, -1.0, 2.2250738585072014e-308]
    data = np.concatenate([np.array(special), rng.normal(0, 1e5, 1000), rng.standard_cauchy(1000)])
    keys = float_keys(data)
    order = np.argsort(keys, kind="stable")
    assert np.array_equal(data[order], np.sort(data))
    assert all(key_value(int(k)) == v for k, v in zip(keys, data, strict=True))
    assert float_keys(np.array([-0.0]))[0] == float_keys(np.array([0.0]))[0]


def test_rank_counter_matches_numpy_counts() -> None:
    rng = np.random.default_rng(3)
    data = np.round(rng.normal(0, 3, 20_000), 1)  # ties on every candidate
    candidates = [0.0, 1.5, -2.0, 99.0, -99.0, 0.1, math.nan]
    counter = RankCounter(candidates)
    for chunk in np.array_split(data, 7):
        counter.add(chunk)
    ordered = np.sort(data)
    assert counter.n == data.size
    for value, below, at_or_below in counter.counts():
        assert below == np.searchsorted(ordered, value, "left")
        assert at_or_below == np.searchsorted(ordered, value, "right")
    assert counter.count(1.5) == (int(np.count_nonzero(data < 1.5)), int(np.count_nonzero(data <= 1.5)))
    with pytest.raises(KeyError):
        counter.count(0.2)


@pytest.mark.parametrize(
    "name",
    ["normal", "duplicates", "extremes", "all_equal", "ties_at_quantile", "infinities", "single"],
)
@pytest.mark.parametrize("max_values", [10_000_000, 50, 1])
def test_selection_is_exact_with_any_memory_cap(name: str, max_values: int) -> None:
    rng = np.random.default_rng(4)
    data = {
        "normal": rng.normal(100, 15, 30_000),
        "duplicates": rng.integers(-3, 4, 30_000).astype(np.float64),
        "extremes": rng.choice([-1e300, 1e300, -5e-324, 0.0, -0.0, 1.0], 30_000),
        "all_equal": np.full(5_000, 7.25),
        # The median is a long run of one value, with distinct values around it.
        "ties_at_quantile": np.concatenate([rng.normal(0, 1, 10_000), np.full(5_001, 1e-3), rng.normal(0, 1, 9_999)]),
        "infinities": np.concatenate([rng.normal(0, 1, 1_000), np.full(600, math.inf), np.full(600, -math.inf)]),
        "single": np.array([-42.0]),
    }[name]
    rng.shuffle(data)
    positions = sorted({exclusive_position(q, data.size) for q in QUANTILES})
    got = select(data, positions, max_values, 16)
    assert got == [float(np.sort(data)[p]) + 0.0 for p in positions]


def test_sketch_hints_make_one_selection_pass_enough() -> None:
    rng = np.random.default_rng(5)
    data = rng.lognormal(3, 1, 200_000)
    sketch = datasketches.kll_doubles_sketch(200)
    sketch.update(data)
    hints = sketch_hints(sketch, QUANTILES, float(sketch.normalized_rank_error(False)))
    counter = RankCounter(hints)
    counter.add(data)
    positions = [exclusive_position(q, data.size) for q in QUANTILES]
    selector = ExactSelector(counter, positions, 20_000)
    selector.begin_pass()  # every window fits: no narrowing pass
    selector.add(data)
    selector.end_pass()
    assert selector.done
    assert selector.peak_values <= 20_000
    assert [selector.value(p) for p in positions] == [numpy_exact(data, q) for q in QUANTILES]


@given(
    data=hnp.arrays(
        np.float64,
        st.integers(1, 300),
        elements=st.one_of(
            st.floats(allow_nan=False, allow_infinity=True),
            st.sampled_from([0.0, -0.0, 1.0, 1e300, -1e300]),
        ),
    ),
    q=st.floats(0.0, 1.0),
    max_values=st.integers(1, 400),
)
@settings(max_examples=200, deadline=None)
def test_selection_property(data: FloatArray, q: float, max_values: int) -> None:
    position = exclusive_position(q, data.size)
    [got] = select(data, [position], max_values, 8, hints=data[:3].tolist())
    assert got == float(np.sort(data)[position]) + 0.0


def test_audit_of_a_merged_estimate_matches_numpy() -> None:
    rng = np.random.default_rng(6)
    shards = {
        0: rng.normal(0, 1, 40_000),
        1: rng.pareto(1.1, 30_000),
        2: np.round(rng.normal(0, 1, 30_000), 2),
        3: np.empty(0),
    }
    claims, merged = claims_for(shards)
    # Interior quantiles: within the rank error of 0 or 1 the served band's outer value is
    # the sketch's smallest or largest *retained* item, which need not bracket the exact one.
    estimate = estimate_of(merged, (0.02, 0.25, 0.5, 0.9, 0.95))
    source = ListSource(shards)

    result = run_audit(source, [estimate], claims, sketch_hints(merged, QUANTILES, estimate.rank_error))

    everything = np.concatenate(list(shards.values()))
    ordered = np.sort(everything)
    assert result.n == everything.size
    assert result.ok, result
    assert source.passes == list(range(1, result.passes + 1))
    assert result.passes == 2
    for audit in result.estimates[0].quantiles:
        assert audit.exact == numpy_exact(everything, audit.q)
        assert audit.below == np.searchsorted(ordered, audit.band.value, "left")
        assert audit.at_or_below == np.searchsorted(ordered, audit.band.value, "right")
        assert audit.inside
        assert audit.band_holds
    for shard_audit in result.shards:
        values = shards[shard_audit.claim.shard]
        assert shard_audit.counted == values.size
        assert not shard_audit.problems
        if values.size:
            assert (shard_audit.min, shard_audit.max) == (values.min(), values.max())
            assert shard_audit.median_below == np.sum(values < shard_audit.claim.median)


def test_a_wrong_count_a_wrong_rejected_count_and_a_bad_served_value_are_reported() -> None:
    rng = np.random.default_rng(7)
    shards = {0: rng.normal(0, 1, 5_000), 1: rng.normal(0, 1, 5_000)}
    claims, merged = claims_for(shards)
    forged = [claims[0], ShardClaim(**{**claims[1].__dict__, "n": 4_999})]
    error = float(merged.normalized_rank_error(False))
    everything = np.concatenate(list(shards.values()))
    far_off = float(np.quantile(everything, 0.5 + 3 * error))
    band_misses = QuantileBand(*np.quantile(everything, [0.9, 0.9 + error / 2, 0.9 + error]).tolist())
    bad = ServedEstimate(
        "served",
        "test",
        10_000,
        error,
        (ServedQuantile(0.5, QuantileBand(far_off, far_off, far_off)), ServedQuantile(0.9, band_misses)),
    )

    result = run_audit(ListSource(shards, rejected={0: 3}), [bad], forged)

    assert not result.ok
    assert result.shards[0].problems == ("rejected: snapshot says 0, input has 3",)
    assert any(p.startswith("n: snapshot says 4999, input has 5000") for p in result.shards[1].problems)
    median, ninetieth = result.estimates[0].quantiles
    assert not median.inside
    assert median.rank_error == pytest.approx(median.rank_low - 0.5)
    assert median.rank_error > 2 * error
    # Its value is within the bound, but the exact 0.9 quantile lies below its band.
    assert ninetieth.inside
    assert not ninetieth.band_holds
    assert ninetieth.exact < ninetieth.band.lower


def test_nothing_covered_is_not_a_failure_and_needs_one_pass() -> None:
    shards = {0: np.empty(0), 1: np.empty(0)}
    claims, merged = claims_for(shards)
    source = ListSource(shards)
    result = run_audit(source, [estimate_of(merged)], claims)
    assert result.ok
    assert result.n == 0
    assert result.estimates[0].quantiles == ()
    assert source.passes == [1]


def test_input_that_changes_between_passes_is_an_error() -> None:
    rng = np.random.default_rng(8)
    shards = {0: rng.normal(0, 1, 10_000)}
    claims, merged = claims_for(shards)

    class Shrinking(ListSource):
        def read(self, pass_number: int) -> Iterable[ShardChunk]:
            if pass_number > 1:
                self.shards = {0: self.shards[0][100:]}
            return super().read(pass_number)

    with pytest.raises(AuditError, match="changed"):
        run_audit(Shrinking(shards), [estimate_of(merged)], claims)
