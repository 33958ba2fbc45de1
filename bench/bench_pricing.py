"""Pricing benchmark: gunicorn (N sync workers) against the venue API stand-in, load on loopback.

    .venv/bin/python bench/bench_pricing.py [--workers 2] [--seconds 10] [--runs 3] [--only-bare-comparison]
    .venv/bin/python bench/bench_pricing.py --cold-against-nginx [--before REF]

--cold-against-nginx: every price fetches both venue documents (cache off) from nginx serving the
bundled snapshots (keep-alive, one write per answer: a neutral upstream, as peers are measured
against), next to the bare route; server CPU per request first (the steadier figure), then req/s.

First, next to a bare Flask route (bench/bare_app.py: read the query string, answer a small JSON
object) under the same gunicorn settings in the same run, at 8 and 64 connections, median of
--runs runs, access log on:
  warm, one query      the README's Helsinki example, again and again
  warm, mixed          500 queries: the five venues, random addresses within delivery range, carts
Target (issue 13): >= 75% of the bare route's req/s; p99 at 64 connections <= 1.3x the bare route's.

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
import math
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    HEADER,
    compare_row,
    gunicorn,
    load,
    machine,
    measured_with_baseline,
    median_load,
    metrics_cost,
    prepared_env,
    server_usage,
    usage_row,
)
from bench.venue_standin import Knobs, StandInServer  # noqa: E402

PATH = ("/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki&cart_value=1000"
        "&user_lat=60.17094&user_lon=24.93087")


VENUES = {  # slug: (latitude, longitude) of the bundled snapshots
    "home-assignment-venue-helsinki": (60.17012143, 24.92813512),
    "home-assignment-venue-stockholm": (59.3466978, 18.0314984),
    "home-assignment-venue-berlin": (52.5003197, 13.4536149),
    "home-assignment-venue-tallinn": (59.4294374, 24.7712316),
    "home-assignment-venue-tokyo": (35.6617298, 139.7040915),
}


def mixed_queries(count: int = 500, seed: int = 11) -> list[str]:
    """Queries at random addresses up to ~900 m from a random venue (all deliverable), random carts."""
    rng = random.Random(seed)
    paths = []
    for _ in range(count):
        slug, (lat, lon) = rng.choice(list(VENUES.items()))
        metres, bearing = rng.uniform(0, 900), rng.uniform(0, 2 * math.pi)
        user_lat = lat + metres * math.cos(bearing) / 111_320
        user_lon = lon + metres * math.sin(bearing) / (111_320 * math.cos(math.radians(lat)))
        paths.append(f"/api/v1/delivery-order-price?venue_slug={slug}&cart_value={rng.randrange(100, 5000)}"
                     f"&user_lat={user_lat:.6f}&user_lon={user_lon:.6f}")
    return paths


def bare_comparison(args, standin_url: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="courier-bench-pricing-"))
    queries = mixed_queries()
    mixed = folder / "mixed.tsv"
    mixed.write_text("".join(f"GET\t{q}\t\n" for q in queries))
    bare_mixed = folder / "bare-mixed.tsv"
    bare_mixed.write_text("".join(f"GET\t/query?{q.split('?', 1)[1]}\t\n" for q in queries))
    levels, bare, ours = [8, 64], {}, {}
    get = {"seconds": args.seconds}
    with prepared_env({"COURIER_VENUE_API_URL": standin_url, "COURIER_ACCESS_LOG": "true",
                       "COURIER_LOG_LEVEL": "INFO"}) as env:
        with gunicorn(env, args.workers, target="bench.bare_app:app", health="/query", quiet=True) as url:
            load("warm-up", url, "/query", seconds=2, connections=8)
            start = server_usage(url)
            for c in levels:
                bare[("one", c)] = median_load(args.runs, f"bare /query c={c}", url, "/query?" + PATH.split("?")[1],
                                               connections=c, **get)
                bare[("mixed", c)] = median_load(args.runs, f"bare /query mixed c={c}", url, "/query",
                                                 requests_file=str(bare_mixed), connections=c, **get)
            usage = [("bare (every scenario)", start, server_usage(url), bare)]
        def measure(root: Path, label: str) -> dict:
            results = {}
            with gunicorn(env, args.workers, quiet=True, root=root) as url:
                load("warm-up", url, PATH, seconds=2, connections=8)  # every worker has the venue in memory
                load("warm-up", url, "/", requests_file=str(mixed), seconds=2, connections=8)
                start = server_usage(url)
                for c in levels:
                    results[("one", c)] = median_load(args.runs, f"{label}, warm, one query c={c}", url, PATH,
                                                      connections=c, **get)
                    results[("mixed", c)] = median_load(args.runs, f"{label}, warm, 500 queries c={c}", url, "/",
                                                        requests_file=str(mixed), connections=c, **get)
                usage.append((f"courier {label} (every scenario)", start, server_usage(url), results))
            return results

        ours, before = measured_with_baseline(measure, "price", args.before)
    # Server CPU per request first: steadier than req/s on a shared machine.
    for label, usage_start, usage_end, results in usage:
        print(usage_row(label, usage_start, usage_end, sum(r.requests for r in results.values()) * args.runs))
    for c in levels:
        print(compare_row(ours[("one", c)], bare[("one", c)]))
        print(compare_row(ours[("mixed", c)], bare[("mixed", c)]))
        if before:
            print(compare_row(before[("one", c)], bare[("one", c)]))
            print(compare_row(ours[("one", c)], before[("one", c)], f"{args.before}"))
            print(compare_row(ours[("mixed", c)], before[("mixed", c)], f"{args.before}"))
    print(metrics_cost({"COURIER_VENUE_API_URL": standin_url}, args.workers, args.runs, "price", PATH, **get))


NGINX_CONF = """worker_processes 1;
error_log {folder}/error.log warn;
pid {folder}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    location ~ ^/venues/([a-z0-9-]+)/(static|dynamic)$ {{
      default_type application/json;
      alias {venues}/$1.$2.json;
    }}
  }}
}}
"""


def nginx_upstream():
    """nginx serving data/venues/ as the venue API (``/venues/<slug>/<half>``); yields its URL."""
    import contextlib
    import shutil
    import subprocess

    from bench.harness import free_port, wait_http

    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    folder = Path(tempfile.mkdtemp(prefix="courier-bench-nginx-"))
    port = free_port()
    (folder / "nginx.conf").write_text(NGINX_CONF.format(folder=folder, port=port,
                                                         venues=Path(__file__).resolve().parent.parent / "data" /
                                                         "venues"))

    @contextlib.contextmanager
    def running():
        proc = subprocess.Popen([binary, "-c", str(folder / "nginx.conf"), "-p", str(folder), "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/venues/home-assignment-venue-helsinki/static")
            yield url
        finally:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(folder, ignore_errors=True)

    return running()


def cold_comparison(args) -> None:
    """Cache off against nginx: server CPU per request of a cold price, the bare route's, and (with
    --before) the named commit's, same run."""
    get = {"seconds": args.seconds}
    with nginx_upstream() as upstream:
        with prepared_env({"COURIER_VENUE_API_URL": upstream, "COURIER_VENUE_CACHE_ENABLED": "false",
                           "COURIER_ACCESS_LOG": "true", "COURIER_LOG_LEVEL": "INFO"}) as env:
            rows = []
            with gunicorn(env, args.workers, target="bench.bare_app:app", health="/query", quiet=True) as url:
                load("warm-up", url, "/query", seconds=2, connections=8)
                start = server_usage(url)
                bare = median_load(args.runs, "bare /query c=8", url, "/query?" + PATH.split("?")[1],
                                   connections=8, **get)
                rows.append(usage_row("bare route", start, server_usage(url), bare.requests * args.runs))

            def measure(root: Path, label: str) -> dict:
                with gunicorn(env, args.workers, quiet=True, root=root) as url:
                    load("warm-up", url, PATH, seconds=2, connections=8)
                    start = server_usage(url)
                    result = median_load(args.runs, f"{label}, cold (cache off, nginx upstream) c=8", url, PATH,
                                         connections=8, **get)
                    rows.append(usage_row(f"courier {label}, cold", start, server_usage(url),
                                          result.requests * args.runs))
                return {"cold": result}

            ours, before = measured_with_baseline(measure, "price", args.before)
    for row in rows:
        print(row)
    print(compare_row(ours["cold"], bare))
    if before:
        print(compare_row(ours["cold"], before["cold"], f"{args.before}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only-bare-comparison", action="store_true", help="skip the upstream scenarios")
    parser.add_argument("--cold-against-nginx", action="store_true",
                        help="cache off, nginx serving the venue snapshots: cold prices vs the bare route")
    parser.add_argument("--before", metavar="REF", help="also serve this git commit (a temporary worktree) in the "
                        "bare comparison: the working tree's req/s as a %% of that commit's, same run")
    args = parser.parse_args()
    if args.cold_against_nginx:
        print(f"machine: {machine()}; gunicorn sync workers: {args.workers}; median of {args.runs} runs")
        cold_comparison(args)
        return
    if args.only_bare_comparison:
        print(f"machine: {machine()}; gunicorn sync workers: {args.workers}; median of {args.runs} runs")
        with StandInServer(Knobs(seed=1)) as standin:
            bare_comparison(args, standin.url)
        return
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
