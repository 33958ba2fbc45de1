"""Estimate benchmark: Courier's estimate next to a bare Flask route, same gunicorn settings, same run.

    .venv/bin/python bench/bench_estimate.py [--workers 2] [--seconds 5] [--runs 3]

Serves, one after the other under gunicorn.conf.py (sync workers, --workers each):
  bare     bench/bare_app.py: parse the JSON body, answer a small JSON object (the framework's part),
           under gunicorn.conf.py and again under gunicorn's defaults (single body only)
  courier  the app as production runs it: access log on (written to /dev/null instead of a terminal)
and loads each with wrk at 8 and 64 connections, taking the median of --runs runs:
  single   one body (the README's example), POST /api/v1/delivery-estimate and POST /
  mixed    500 bodies drawn at random: random venues (10% unknown), hours, retail flags, both paths
Prints req/s and p99 of each, ours as a % of the bare route and as a multiple of its p99.
Targets (issue 13): >= 80% of the bare route's req/s; p99 at 64 connections <= 1.3x the bare route's.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    ROOT,
    compare_row,
    gunicorn,
    machine,
    measured_with_baseline,
    median_load,
    metrics_cost,
    plain_gunicorn,
    prepared_env,
    server_usage,
    usage_row,
)

BODY = json.dumps({"venue_id": "8a61b8c", "time_received": "2017-01-25 03:16:07.938113", "is_retail": True})


def mixed_bodies(count: int = 500, seed: int = 13) -> list[str]:
    rng = random.Random(seed)
    with open(ROOT / "data" / "venue_preparation.csv", newline="") as handle:
        venues = [row["venue_id"] for row in csv.DictReader(handle)]
    bodies = []
    for _ in range(count):
        venue = rng.choice(venues) if rng.random() > 0.1 else f"unknown-{rng.randrange(10**6)}"
        day, hour, minute = rng.randrange(1, 29), rng.randrange(24), rng.randrange(60)
        stamp = rng.choice([f"2017-02-{day:02d} {hour:02d}:{minute:02d}:07",
                            f"2017-02-{day:02d}T{hour:02d}:{minute:02d}:07",
                            f"2017-02-{day:02d} {hour:02d}:{minute:02d}:07.938113"])
        bodies.append(json.dumps({"venue_id": venue, "time_received": stamp, "is_retail": rng.random() < 0.3}))
    return bodies


def requests_file(folder: Path, name: str, lines: list[tuple[str, str, str]]) -> str:
    path = folder / name
    path.write_text("".join(f"{m}\t{p}\t{b}\n" for m, p, b in lines))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", metavar="REF", help="also serve this git commit (a temporary worktree): the "
                        "working tree's req/s as a %% of that commit's, same run")
    args = parser.parse_args()
    levels = [8, 64]
    folder = Path(tempfile.mkdtemp(prefix="courier-bench-estimate-"))
    bodies = mixed_bodies()
    mixed = requests_file(folder, "mixed.tsv", [("POST", random.Random(i).choice(
        ["/api/v1/delivery-estimate", "/"]), b) for i, b in enumerate(bodies)])
    bare_mixed = requests_file(folder, "bare-mixed.tsv", [("POST", "/echo", b) for b in bodies])
    print(f"machine: {machine()}; gunicorn sync workers: {args.workers}; connections: {levels}; "
          f"median of {args.runs} runs of {args.seconds} s")
    post = {"method": "POST", "seconds": args.seconds}
    bare, ours = {}, {}
    with prepared_env({"COURIER_ACCESS_LOG": "true", "COURIER_LOG_LEVEL": "INFO"}) as env:
        with gunicorn(env, args.workers, target="bench.bare_app:app", health="/echo", quiet=True) as url:
            median_load(1, "warm-up", url, "/echo", body=BODY, connections=8, method="POST", seconds=2)
            start = server_usage(url)
            for c in levels:
                bare[("single", c)] = median_load(args.runs, f"bare /echo c={c}", url, "/echo", body=BODY,
                                                  connections=c, **post)
                bare[("mixed", c)] = median_load(args.runs, f"bare /echo mixed c={c}", url, "/echo",
                                                 requests_file=bare_mixed, connections=c, **post)
            usage = [("bare (every scenario)", start, server_usage(url), bare)]
        # The same bare route under gunicorn's defaults: what Courier's gunicorn.conf.py adds shows.
        plain: dict = {}
        with plain_gunicorn(env, args.workers, "bench.bare_app:app", "/query") as url:
            median_load(1, "warm-up", url, "/echo", body=BODY, connections=8, method="POST", seconds=2)
            start = server_usage(url)
            for c in levels:
                plain[("single", c)] = median_load(args.runs, f"bare, gunicorn defaults /echo c={c}", url, "/echo",
                                                   body=BODY, connections=c, **post)
            usage.append(("bare, gunicorn defaults (single body)", start, server_usage(url), plain))

        def measure(root: Path, label: str) -> dict:
            results = {}
            with gunicorn(env, args.workers, quiet=True, root=root) as url:
                median_load(1, "warm-up", url, "/api/v1/delivery-estimate", body=BODY, connections=8, **post)
                start = server_usage(url)
                for c in levels:
                    for path in ("/api/v1/delivery-estimate", "/"):
                        results[(path, c)] = median_load(args.runs, f"{label} {path} c={c}", url, path, body=BODY,
                                                         connections=c, **post)
                    results[("mixed", c)] = median_load(args.runs, f"{label} mixed 500 bodies c={c}", url, "/",
                                                        requests_file=mixed, connections=c, **post)
                usage.append((f"courier {label} (every scenario)", start, server_usage(url), results))
            return results

        ours, before = measured_with_baseline(measure, "estimate", args.before)
    # Server CPU per request first: steadier than req/s on a shared machine.
    for label, usage_start, usage_end, results in usage:
        # Requests of the median runs times the runs: an estimate of all requests served.
        print(usage_row(label, usage_start, usage_end, sum(r.requests for r in results.values()) * args.runs))
    for c in levels:
        for path in ("/api/v1/delivery-estimate", "/"):
            print(compare_row(ours[(path, c)], bare[("single", c)]))
            print(compare_row(ours[(path, c)], plain[("single", c)], "bare, gunicorn defaults"))
            if before:
                print(compare_row(ours[(path, c)], before[(path, c)], args.before))
        print(compare_row(ours[("mixed", c)], bare[("mixed", c)]))
        if before:
            print(compare_row(ours[("mixed", c)], before[("mixed", c)], args.before))
    print(metrics_cost({}, args.workers, args.runs, "estimate", "/api/v1/delivery-estimate", body=BODY, **post))

if __name__ == "__main__":
    main()
