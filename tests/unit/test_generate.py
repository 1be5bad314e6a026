"""Synthetic streams are deterministic, finite, and survive their message encodings."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.codec import decode_batch
from pipeline.kafka.generate import Distribution, MessageFormat, encode_messages, generate


@pytest.mark.parametrize("distribution", list(Distribution))
@pytest.mark.parametrize("count", [0, 1, 1001])
def test_each_distribution_gives_count_finite_numbers(distribution: Distribution, count: int) -> None:
    values = generate(distribution, count, seed=3)
    assert values.shape == (count,)
    assert values.dtype == np.float64
    assert np.isfinite(values).all()


@pytest.mark.parametrize("distribution", list(Distribution))
def test_each_distribution_is_deterministic_per_seed(distribution: Distribution) -> None:
    first = generate(distribution, 500, seed=11)
    assert first.tobytes() == generate(distribution, 500, seed=11).tobytes()
    assert first.tobytes() != generate(distribution, 500, seed=12).tobytes()


def test_sorted_distribution_is_sorted() -> None:
    values = generate(Distribution.SORTED, 1000)
    assert (np.diff(values) >= 0).all()


@pytest.mark.parametrize("fmt", list(MessageFormat))
@pytest.mark.parametrize("distribution", [Distribution.MIXED, Distribution.PARETO, Distribution.UNIFORM])
def test_encoded_messages_decode_to_the_same_values(fmt: MessageFormat, distribution: Distribution) -> None:
    values = generate(distribution, 250, seed=5)
    messages = list(encode_messages(values, fmt, batch_size=40))
    assert len(messages) == (250 if fmt is MessageFormat.SINGLE else 7)
    decoded = decode_batch(messages)
    assert decoded.rejections == ()
    assert decoded.values.tobytes() == values.tobytes()


@pytest.mark.parametrize("fmt", list(MessageFormat))
def test_encoding_nothing_gives_no_messages(fmt: MessageFormat) -> None:
    assert list(encode_messages(np.empty(0), fmt)) == []
