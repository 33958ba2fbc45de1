"""Estimate benchmark: gunicorn (N sync workers) + load on loopback against POST /api/v1/delivery-estimate.

    .venv/bin/python bench/bench_estimate.py [--workers 2] [--seconds 10]

Prints req/s and p50/p95/p99 for a known and an unknown venue, next to /healthz (the framework's
ceiling on this machine), at one and at four connections per worker.
Target (a benchmark, not a test): p99 <= 3 ms at 2 workers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import HEADER, gunicorn, load, machine, prepared_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    body = json.dumps({"venue_id": "8a61b8c", "time_received": "2017-01-25 03:16:07.938113", "is_retail": True})
    unknown = json.dumps({"venue_id": "unknown-venue", "time_received": "2017-01-25T19:16:07+02:00",
                          "is_retail": False})
    levels = [args.workers, args.workers * 4]  # one connection per worker (latency), four (throughput)
    print(f"machine: {machine()}; gunicorn sync workers: {args.workers}; connections: {levels}")
    with prepared_env() as env, gunicorn(env, args.workers) as url:
        load("warm-up", url, "/api/v1/delivery-estimate", method="POST", body=body, seconds=2, connections=levels[0])
        results = []
        for c in levels:
            results += [
                load(f"healthz (ceiling) c={c}", url, "/healthz", seconds=args.seconds, connections=c),
                load(f"estimate, known venue c={c}", url, "/api/v1/delivery-estimate", method="POST", body=body,
                     seconds=args.seconds, connections=c),
                load(f"estimate, unknown venue c={c}", url, "/api/v1/delivery-estimate", method="POST",
                     body=unknown, seconds=args.seconds, connections=c),
            ]
    print(HEADER)
    for r in results:
        print(r.row())


if __name__ == "__main__":
    main()
