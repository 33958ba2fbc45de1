"""Pricing under upstream faults: failed share, p50/p99 and the slowest answer, per fault mode.

    .venv/bin/python bench/bench_pricing_faults.py [--workers 2] [--seconds 10] [--connections 8]

gunicorn (sync workers) against the venue API stand-in with faults drawn per upstream call:

  cold, 20% hangs        cache off (every request fetches both halves, as a cold cache does)
  cold, 20% malformed    same, 20% of bodies cut short (not JSON)
  cold, 20% trickling    same, 20% of answers sent one byte every 3 ms (each read well within its timeout)
  cold, all hang         every upstream call hangs: how long until the 504
  warm past TTL, all hang  cache on, dynamic TTL 1 s, every refresh hangs: stale answers
  --slug-flood N         N requests for N distinct unknown slugs (offline, and upstream 404): the
                         workers' resident memory before and after (wrk with bench/wrk_random_slugs.lua)

Targets (issue 14): <= 1% failed with 20% hangs or 20% malformed; no answer later than the venue
deadline (2.5 s) + 0.5 s; warm p99 under 50 ms whatever the upstream does.  The load is a Python
client (one thread per connection) because it must see every request's latency, max included.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import gunicorn, machine, prepared_env, server_usage  # noqa: E402
from bench.venue_standin import Knobs, StandInServer  # noqa: E402

PATH = ("/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki&cart_value=1000"
        "&user_lat=60.17094&user_lon=24.93087")


def hammer(url: str, seconds: float, connections: int) -> dict:
    host, port = url.split("//")[1].split(":")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                conn.request("GET", PATH)
                resp = conn.getresponse()
                resp.read()
                conn.close()
                status = resp.status
            except OSError:
                status = 0
            with lock:
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
    failed = sum(n for s, n in statuses.items() if s != 200)
    return {"requests": len(lat), "failed": failed, "p50": q[49] * 1000, "p99": q[98] * 1000,
            "max": lat[-1] * 1000, "statuses": statuses}


def slug_flood(url: str, requests: int, connections: int) -> dict:
    lua = Path(__file__).with_name("wrk_random_slugs.lua")
    before = server_usage(url).rss_kb
    rate_s = max(5, requests // 1500)  # wrk runs for a duration: aim for about ``requests`` requests
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{rate_s}s", "-s", str(lua), url],
                         capture_output=True, text=True, check=True).stdout
    sent = json.loads(next(line for line in out.splitlines() if line.startswith("{")))["requests"]
    return {"requests": sent, "before": before, "after": server_usage(url).rss_kb}


def row(label: str, r: dict) -> str:
    return (f"{label:<28} {r['requests']:>8} {r['failed'] / max(1, r['requests']) * 100:>7.2f}% "
            f"{r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f}  {r['statuses']}")


def fault_rows(args) -> list[tuple[str, dict]]:
    rows = []
    with StandInServer(Knobs(seed=1, hang_s=30)) as standin:
        knobs = standin.app.knobs
        base = {"COURIER_VENUE_API_URL": standin.url}
        with prepared_env({**base, "COURIER_VENUE_CACHE_ENABLED": "false"}) as env, \
                gunicorn(env, args.workers) as url:
            for label, share in (("cold, 20% hangs", "share_hang"), ("cold, 20% malformed", "share_malformed"),
                                 ("cold, 20% trickling", "share_trickle")):
                knobs.share_hang = knobs.share_malformed = knobs.share_trickle = 0.0
                setattr(knobs, share, 0.2)
                rows.append((label, hammer(url, args.seconds, args.connections)))
            knobs.share_malformed, knobs.share_trickle, knobs.share_hang = 0.0, 0.0, 1.0
            rows.append(("cold, all hang", hammer(url, args.seconds, args.connections)))
            knobs.share_hang = 0.0
        with prepared_env({**base, "COURIER_VENUE_DYNAMIC_TTL_S": "1"}) as env, gunicorn(env, args.workers) as url:
            hammer(url, 1.0, args.connections)  # every worker warm for every venue
            knobs.share_hang = 1.0
            rows.append(("warm past TTL, all hang", hammer(url, args.seconds, args.connections)))
            knobs.share_hang = 0.0
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=None,
                        help="default: one per worker, so an answer's time is the server's, not queueing")
    parser.add_argument("--slug-flood", type=int, default=0, help="also flood N distinct unknown slugs")
    parser.add_argument("--flood-only", action="store_true", help="skip the fault scenarios")
    args = parser.parse_args()
    args.connections = args.connections or args.workers
    print(f"machine: {machine()}; gunicorn sync workers: {args.workers}; connections: {args.connections}")
    if not args.flood_only:
        rows = fault_rows(args)
        print(f"{'scenario':<28} {'requests':>8} {'failed':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  statuses")
        for label, r in rows:
            print(row(label, r))
    if args.slug_flood:
        floods = []
        with StandInServer(Knobs(seed=1)) as standin:
            for label, extra in (("offline", {"COURIER_VENUE_API_URL": ""}),
                                 ("upstream 404", {"COURIER_VENUE_API_URL": standin.url})):
                with prepared_env(extra) as env, gunicorn(env, args.workers) as url:
                    floods.append((label, slug_flood(url, args.slug_flood, 8)))
        for label, f in floods:
            print(f"slug flood, {label}: {f['requests']} distinct slugs; worker RSS before {f['before']} KB, "
                  f"after {f['after']} KB")


if __name__ == "__main__":
    main()
