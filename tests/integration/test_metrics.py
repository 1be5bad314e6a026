"""``/metrics`` scraped during a run, parsed with prometheus_client's parser, against what was produced.

The worker runs with ``metrics_shard_series = 2``: per-shard series for the two worst
of its four shards only, and totals and distributions over all four.
"""

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


SHOWN = 2


def test_metrics_during_a_run_agree_with_what_was_produced(deploy: Callable[..., Deployment]) -> None:
    partitions = 4
    deployment = deploy(partitions, metrics_shard_series=str(SHOWN))
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
        assert len(samples.get("dmedian_numbers_ingested_total", {})) <= SHOWN
        owned = _one(samples, "dmedian_owned_numbers")
        assert owned >= last_ingested, (owned, last_ingested)
        last_ingested = owned
        time.sleep(0.2)
    producer.join(10)
    assert scrapes >= 2

    record = deployment.wait_for_n(values.size)
    letters = Counter(letter.reason for letter in deployment.dead_letters())
    settled = time.monotonic() + 30
    while True:
        ctype, samples = _scrape(worker.web_port)
        numbers_lag = _by(samples, "dmedian_topic_consumer_lag", "topic").get(deployment.settings.topic_numbers)
        caught_up = numbers_lag == 0
        if (caught_up and _one(samples, "dmedian_estimate_numbers") == values.size) or time.monotonic() > settled:
            break
        time.sleep(0.5)

    assert ctype.startswith("text/plain")
    assert _one(samples, "dmedian_metrics_shard_series") == SHOWN
    # Every shard in the totals; a series of its own for the SHOWN worst only.
    assert _one(samples, "dmedian_owned_shards") == partitions
    assert _one(samples, "dmedian_owned_numbers") == values.size
    assert (_one(samples, "dmedian_shards_known"), _one(samples, "dmedian_shards_stale")) == (partitions, 0)
    # 1,000 arrays of 200, round-robin over 4 partitions: 50,000 numbers in each shard.
    per_shard = values.size / partitions
    assert _by(samples, "dmedian_shard_numbers", "quantile") == dict.fromkeys(("0", "0.5", "0.9", "1"), per_shard)
    ages = _by(samples, "dmedian_shard_snapshot_age_seconds", "quantile")
    assert 0 <= ages["0"] <= ages["0.5"] <= ages["0.9"] <= ages["1"] < 120, ages
    ingested = _by(samples, "dmedian_numbers_ingested_total", "shard")
    assert len(ingested) == SHOWN
    assert set(ingested) <= {str(p) for p in range(partitions)}
    assert set(ingested.values()) == {per_shard}
    assert _by(samples, "dmedian_rejected_total", "reason") == dict(letters)
    assert sum(letters.values()) == len(bad)

    sent = _by(samples, "dmedian_snapshots_sent_total", "shard")
    sent_bytes = _by(samples, "dmedian_snapshot_sent_bytes_total", "shard")
    assert sorted(sent) == sorted(sent_bytes) == sorted(ingested)
    assert all(count >= 1 for count in sent.values()), sent
    assert all(sent_bytes[shard] > 1000 * sent[shard] for shard in sent), (sent, sent_bytes)
    snapshots = _one(samples, "dmedian_worker_snapshots_sent_total")
    assert snapshots >= partitions
    assert snapshots >= sum(sent.values())
    assert _one(samples, "dmedian_worker_snapshot_sent_bytes_total") > 1000 * snapshots

    assert _one(samples, "dmedian_merge_seconds_count") >= 1
    assert 0 < _one(samples, "dmedian_merge_seconds_sum") < 60
    assert _one(samples, "dmedian_aggregator_hosted") == 1
    assert _one(samples, "dmedian_estimate_numbers") == values.size
    assert (_one(samples, "dmedian_estimate_sources"), _one(samples, "dmedian_estimate_stale_sources")) == (0, 0)
    # The served median is the newest record's (at least as new as the one waited for).
    assert record.median.lower <= _one(samples, "dmedian_median") <= record.median.upper
    assert _one(samples, "dmedian_median_rank_bound") == pytest.approx(record.rank_bound)
    assert _by(samples, "dmedian_quantile", "q").keys() == {"0.5", "0.9", "0.99"}

    # The partitions with the most lag, whatever their topic (the numbers topic is caught up).
    by_topic = _by(samples, "dmedian_topic_consumer_lag", "topic")
    assert by_topic[deployment.settings.topic_numbers] == 0, by_topic
    shown_lag = samples["dmedian_consumer_lag"]
    assert len(shown_lag) == SHOWN, shown_lag
    assert sum(shown_lag.values()) <= sum(by_topic.values()), (shown_lag, by_topic)
    assert (max(shown_lag.values()) > 0) == (max(by_topic.values()) > 0), (shown_lag, by_topic)
    shard_ages = _by(samples, "dmedian_snapshot_age_seconds", "shard")
    assert sorted(shard_ages) == sorted(ingested)
    # The worst shown: the oldest snapshot among all four is one of the two with series.
    assert max(shard_ages.values()) == ages["1"], (shard_ages, ages)
    assert all(ages["0"] <= age for age in shard_ages.values()), (shard_ages, ages)
    stale = _by(samples, "dmedian_shard_stale", "shard")
    assert (sorted(stale), set(stale.values())) == (sorted(ingested), {0.0})
