#!/usr/bin/env python3
"""``bench_throughput.py`` with the worker rows on both fetchers of the input, in ONE run.

Adds ``worker librdkafka`` and ``worker librdkafka interval`` (``fetcher = librdkafka``)
and ``worker aiokafka`` and ``worker aiokafka interval`` (``fetcher = aiokafka``) to
the script's runners; everything else (workloads, peers, options, output) is
``bench_throughput.py``'s, which see.

    .venv/bin/python scripts/bench_fetcher.py --skip worker/event
    .venv/bin/python scripts/bench_fetcher.py --only float64-1000 --skip quix --skip bare
"""

from __future__ import annotations

import bench_throughput

FETCHER_WORKERS = {
    f"worker {fetcher}{' interval' if interval else ''}": {"fetcher": fetcher}
    | ({"emission_rule": "interval"} if interval else {})
    for fetcher in ("aiokafka", "librdkafka")
    for interval in (False, True)
}
"""The worker rows this script adds, by runner name: settings over the defaults."""


def main() -> None:
    bench_throughput.WORKERS.update(FETCHER_WORKERS)
    bench_throughput.main()


if __name__ == "__main__":
    main()
