"""Real-time offer benchmark: POST /api/v1/offers against gunicorn, partner = Courier's reference partner.

    .venv/bin/python bench/bench_offers_realtime.py [--workers 5] [--seconds 10]

Each request computes one member's features and scores it on the reference partner, which this
gunicorn serves itself: answered in process since the fix of issue 23 (before, three calls back
into the same gunicorn, which needed free workers and deadlocked at 8 connections on 5 workers).
The default is what `make run` uses on 2 cores (2 x cores + 1). Prints req/s, p50/p95/p99 and
errors at each of --connections (default 1,2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import HEADER, ROOT, free_port, gunicorn, load, machine, prepared_env  # noqa: E402

BODY = json.dumps({"member_id": "F44DBBBC", "as_of": "2024-01-05", "transactions": [
    {"ts": "2023-12-10 11:24:18", "type": "gift", "points": 9600, "revenue_usd": 32.0},
    {"ts": "2019-01-27 23:46:35", "type": "redeem", "points": -7800, "revenue_usd": 0.0},
    {"ts": "2019-02-06 18:50:57", "type": "buy", "points": 4700, "revenue_usd": 47.0},
    {"ts": "2023-03-11 05:49:55", "type": "redeem", "points": -2200, "revenue_usd": 0.0},
    {"ts": "2022-07-18 10:13:00", "type": "buy", "points": 8400, "revenue_usd": 84.0},
]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", default="1,2", help="Concurrencies to load at, comma-separated.")
    args = parser.parse_args()
    print(f"machine: {machine()}; gunicorn sync workers: {args.workers}")
    port = free_port()
    partners = Path(f"/tmp/courier-bench-partners-{port}.toml")
    partners.write_text((ROOT / "data/partners.toml").read_text().replace("127.0.0.1:8000", f"127.0.0.1:{port}"))
    # offers:score open, as a benchmark has no key: the defaults require one for real-time offers.
    scopes = "pricing:read estimate:read ops:read docs:read offers:score"
    with prepared_env({"COURIER_PARTNERS_FILE": str(partners), "COURIER_OPEN_SCOPES": scopes}) as env, \
            gunicorn(env, args.workers, port) as url:
        load("warm-up", url, "/api/v1/offers", method="POST", body=BODY, seconds=2, connections=1)
        results = [load(f"real-time offer c={c}", url, "/api/v1/offers", method="POST", body=BODY,
                        seconds=args.seconds, connections=int(c)) for c in args.connections.split(",")]
    partners.unlink(missing_ok=True)
    print(HEADER)
    for r in results:
        print(r.row())


if __name__ == "__main__":
    main()
