"""KLL sketches serialized by the Java DataSketches library read as the pipeline reads its own.

The bytes come from ``KllDoublesSketch.toByteArray()`` (datasketches-java, see
tests/foreign_sketches.py): :func:`kll_layout` must accept them and agree with the
C++ deserializer, and the sketch must answer within its stated rank error. Without
Java or the jars these tests skip on a developer's machine and fail in CI.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import datasketches
import numpy as np
import numpy.typing as npt
import pytest

from pipeline.core.snapshot_checks import KllLayout, kll_layout
from tests.foreign_sketches import ForeignSketchError, java_available, java_kll_doubles, java_kll_doubles_many

_RNG = np.random.default_rng(20261207)
ARRAYS: dict[str, npt.NDArray[np.float64]] = {
    "empty": np.empty(0),
    "one value": np.array([-2.75]),
    "1,000 values": _RNG.uniform(-1e6, 1e6, 1_000),
    "ties and negatives": _RNG.integers(-5, 5, 5_000).astype(np.float64),
    "100,000 normals": _RNG.standard_normal(100_000),
}
KS = (200, 50)
CASES = [(name, k) for name in ARRAYS for k in KS]
QUANTILES = (0.5, 0.9, 0.99)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}


def _java_or_skip() -> None:
    reason = java_available()
    if reason is not None:
        # A skipped check is a defect where it is meant to run: CI must have Java and Maven.
        if _in_ci():
            pytest.fail(f"datasketches-java cannot run: {reason}")
        pytest.skip(f"datasketches-java cannot run: {reason}")


@pytest.fixture(scope="module")
def java_bytes() -> dict[tuple[str, int], bytes]:
    """The Java serialization of every case, from one JVM."""
    _java_or_skip()
    sketches = java_kll_doubles_many([(ARRAYS[name], k) for name, k in CASES])
    return dict(zip(CASES, sketches, strict=True))


def _rank_interval(ordered: npt.NDArray[np.float64], value: float) -> tuple[float, float]:
    """The exact normalized ranks ``value`` spans in the data: ties give it an interval."""
    n = len(ordered)
    return float(np.searchsorted(ordered, value, "left")) / n, float(np.searchsorted(ordered, value, "right")) / n


def _levels_sorted(layout: KllLayout) -> bool:
    # As the aggregator requires: every level above 0 sorted, level 0 too when flagged so.
    first = 0 if layout.level_zero_sorted else 1
    for start, end in zip(layout.levels[first:-1], layout.levels[first + 1 :], strict=True):
        level = layout.items[start:end]
        if np.any(level[1:] < level[:-1]):
            return False
    return True


@pytest.mark.parametrize(("name", "k"), CASES)
def test_layout_reads_java_bytes(java_bytes: dict[tuple[str, int], bytes], name: str, k: int) -> None:
    values, data = ARRAYS[name], java_bytes[name, k]
    layout = kll_layout(data)
    assert (layout.n, layout.k) == (len(values), k)
    assert layout.weight == layout.n  # compaction keeps weight: what the "inconsistent" check relies on
    assert _levels_sorted(layout)
    if len(values):
        assert (layout.min, layout.max) == (values.min(), values.max())
        assert np.all((layout.items >= values.min()) & (layout.items <= values.max()))
    else:
        assert np.isnan([layout.min, layout.max]).all()
        assert layout.items.size == 0


@pytest.mark.parametrize(("name", "k"), CASES)
def test_python_reads_java_bytes(java_bytes: dict[tuple[str, int], bytes], name: str, k: int) -> None:
    values, data = ARRAYS[name], java_bytes[name, k]
    sketch = datasketches.kll_doubles_sketch.deserialize(data)
    assert (sketch.n, sketch.k) == (len(values), k)
    assert sketch.num_retained == kll_layout(data).items.size
    if not len(values):
        assert sketch.is_empty()
        return
    assert (sketch.get_min_value(), sketch.get_max_value()) == (values.min(), values.max())
    eps = sketch.normalized_rank_error(False)
    ordered = np.sort(values)
    for q in QUANTILES:
        estimate = sketch.get_quantile(q)
        low, high = _rank_interval(ordered, estimate)
        assert low - eps <= q <= high + eps, f"q={q}: {estimate} has exact rank [{low}, {high}], error {eps}"


def test_java_sketch_merges_into_python(java_bytes: dict[tuple[str, int], bytes]) -> None:
    """The aggregator merges shards' sketches: a Java one must merge with a Python one."""
    values = ARRAYS["100,000 normals"]
    ours = datasketches.kll_doubles_sketch(200)
    for v in values[:1_000]:
        ours.update(v)
    ours.merge(datasketches.kll_doubles_sketch.deserialize(java_bytes["100,000 normals", 200]))
    assert ours.n == len(values) + 1_000
    assert (ours.get_min_value(), ours.get_max_value()) == (values.min(), values.max())
    kll_layout(ours.serialize())


def test_single_call_equals_input() -> None:
    _java_or_skip()
    values: Sequence[float] = [3.5, -1.0, 1e300, 5e-324, 0.1]
    sketch = datasketches.kll_doubles_sketch.deserialize(java_kll_doubles(values, k=8))
    assert (sketch.n, sketch.k) == (len(values), 8)
    # Below k every value is kept as given: the protocol carries doubles exactly.
    assert sorted(sketch.get_quantile(r, True) for r in (0.2, 0.4, 0.6, 0.8, 1.0)) == sorted(values)


def test_java_error_is_reported() -> None:
    _java_or_skip()
    # datasketches-java refuses k < 8: its message must reach the caller, on the first line.
    with pytest.raises(ForeignSketchError, match=r"^exit 1 from java: .*K must be >= 8"):
        java_kll_doubles([1.0], k=4)
    with pytest.raises(ValueError, match="flat sequence"):
        java_kll_doubles_many([([[1.0, 2.0]], 200)])  # type: ignore[list-item]
