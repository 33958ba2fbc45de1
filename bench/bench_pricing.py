"""Pricing benchmark: gunicorn (N sync workers) against the venue API stand-in, load on loopback.

    .venv/bin/python bench/bench_pricing.py [--workers 2] [--seconds 10]

Scenarios, each at two concurrencies (one connection per worker: latency; four: throughput):
  warm               venue data in memory: no network, no database
  upstream-every-time  cache off: both halves fetched (in parallel) on every request
  ... with 20% 429s  cache off, the stand-in answers 20% of calls 429 (Retry-After: 1)
  cache, TTL 1 s, 20% 429s  cache on, dynamic half refreshed every second, 20% 429s upstream

Targets (benchmarks, not tests): warm p99 <= 5 ms at 2 workers; 0 failed client requests with
20% upstream 429s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import HEADER, gunicorn, load, machine, prepared_env  # noqa: E402
from bench.venue_standin import Knobs, StandInServer  # noqa: E402

PATH = ("/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki&cart_value=1000"
        "&user_lat=60.17094&user_lon=24.93087")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    levels = [args.workers, args.workers * 4]
    print(f"machine: {machine()}; gunicorn sync workers: {args.workers}; connections: {levels}")
    results = []
    with StandInServer(Knobs(seed=1)) as standin:
        base = {"COURIER_VENUE_API_URL": standin.url}
        with prepared_env(base) as env, gunicorn(env, args.workers) as url:
            load("warm-up", url, PATH, seconds=2, connections=levels[0])
            for c in levels:
                results.append(load(f"warm c={c}", url, PATH, seconds=args.seconds, connections=c))
        with prepared_env({**base, "COURIER_VENUE_CACHE_ENABLED": "false"}) as env, gunicorn(env, args.workers) as url:
            for c in levels:
                results.append(load(f"upstream-every-time c={c}", url, PATH, seconds=args.seconds, connections=c))
            standin.app.knobs.share_429, standin.app.knobs.retry_after = 0.2, 1
            before = dict(standin.app.stats)
            for c in levels:
                results.append(load(f"every-time, 20% 429s c={c}", url, PATH, seconds=args.seconds, connections=c))
            upstream_429 = standin.app.stats["429"] - before.get("429", 0)
            upstream_total = standin.app.stats["requests"] - before.get("requests", 0)
        # Production shape: cache on, dynamic half due every second, upstream rate-limiting.
        with prepared_env({**base, "COURIER_VENUE_DYNAMIC_TTL_S": "1"}) as env, gunicorn(env, args.workers) as url:
            for c in levels:
                results.append(load(f"cache, TTL 1 s, 20% 429s c={c}", url, PATH, seconds=args.seconds, connections=c))
    print(HEADER)
    for r in results:
        print(r.row())
    print(f"stand-in during the 429 runs: {upstream_total} upstream calls, {upstream_429} answered 429 "
          f"({upstream_429 / max(1, upstream_total) * 100:.1f}%)")


if __name__ == "__main__":
    main()
