"""``/metrics`` scraped during a run, parsed with prometheus_client's parser, against what was produced."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.kafka.generate import Distribution, MessageFormat, generate
from tests.integration.harness import Deployment

pytestmark = pytest.mark.integration

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def _scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        ctype, text = response.headers["Content-Type"], response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return ctype, samples


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples.get(name, {}).items()}


def _one(samples: Samples, name: str) -> float:
    return samples[name][()]


def test_metrics_during_a_run_agree_with_what_was_produced(deploy: Callable[..., Deployment]) -> None:
    partitions = 4
    deployment = deploy(partitions)
    worker = deployment.worker()
    values = generate(Distribution.NORMAL, 200_000, seed=21)
    bad = [b"abc", b"[1, 2", b"", b'"text"']
    producer = threading.Thread(
        target=lambda: deployment.produce(values, MessageFormat.JSON_ARRAY, 200, partition=lambda i: i % partitions)
    )
    producer.start()
    deployment.produce_raw(bad, partition=1)

    # Scrape while the numbers arrive: every scrape parses, and counters never go back.
    scrapes, last_ingested = 0, 0.0
    deadline = time.monotonic() + 180
    while producer.is_alive() or last_ingested < values.size:
        assert time.monotonic() < deadline, f"ingested {last_ingested} of {values.size}\n{deployment.worker_logs()}"
        try:
            _, samples = _scrape(worker.web_port)
        except OSError:
            time.sleep(0.3)  # the web server is not up yet
            continue
        scrapes += 1
        ingested = sum(_by(samples, "dmedian_numbers_ingested_total", "shard").values())
        assert ingested >= last_ingested, (ingested, last_ingested)
        last_ingested = ingested
        time.sleep(0.2)
    producer.join(10)
    assert scrapes >= 2

    record = deployment.wait_for_n(values.size)
    letters = Counter(letter.reason for letter in deployment.dead_letters())
    settled = time.monotonic() + 30
    while True:
        ctype, samples = _scrape(worker.web_port)
        lag = _by(samples, "dmedian_consumer_lag", "partition")
        numbers_lag = {
            dict(labels)["partition"]: value
            for labels, value in samples["dmedian_consumer_lag"].items()
            if dict(labels)["topic"] == deployment.settings.topic_numbers
        }
        caught_up = len(numbers_lag) == partitions and not any(numbers_lag.values())
        if (caught_up and _one(samples, "dmedian_estimate_numbers") == values.size) or time.monotonic() > settled:
            break
        time.sleep(0.5)

    assert ctype.startswith("text/plain")
    ingested = _by(samples, "dmedian_numbers_ingested_total", "shard")
    assert sorted(ingested) == [str(p) for p in range(partitions)]
    assert sum(ingested.values()) == values.size
    assert _by(samples, "dmedian_rejected_total", "reason") == dict(letters)
    assert sum(letters.values()) == len(bad)

    sent = _by(samples, "dmedian_snapshots_sent_total", "shard")
    sent_bytes = _by(samples, "dmedian_snapshot_sent_bytes_total", "shard")
    assert sorted(sent) == sorted(ingested)
    assert all(count >= 1 for count in sent.values()), sent
    assert all(sent_bytes[shard] > 1000 * sent[shard] for shard in sent), (sent, sent_bytes)

    assert _one(samples, "dmedian_merge_seconds_count") >= 1
    assert 0 < _one(samples, "dmedian_merge_seconds_sum") < 60
    assert _one(samples, "dmedian_aggregator_hosted") == 1
    assert _one(samples, "dmedian_estimate_numbers") == values.size
    # The served median is the newest record's (at least as new as the one waited for).
    assert record.median.lower <= _one(samples, "dmedian_median") <= record.median.upper
    assert _one(samples, "dmedian_median_rank_bound") == pytest.approx(record.rank_bound)
    assert _by(samples, "dmedian_quantile", "q").keys() == {"0.5", "0.9", "0.99"}

    assert numbers_lag == {str(p): 0.0 for p in range(partitions)}, lag
    ages = _by(samples, "dmedian_snapshot_age_seconds", "shard")
    assert sorted(ages) == sorted(ingested)
    assert all(0 <= age < 120 for age in ages.values()), ages
    assert set(_by(samples, "dmedian_shard_stale", "shard").values()) == {0.0}
