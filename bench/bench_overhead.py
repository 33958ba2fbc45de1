"""Courier's per-request overhead over a bare Flask route: server CPU per request, interleaved rounds.

    .venv/bin/python bench/bench_overhead.py [--rounds 3] [--seconds 5] [--workers 2] [--before REF]

Issue 22's second target, measured the way its reviewers measure it: the estimate (``POST
/api/v1/delivery-estimate``, the README's body) and the warm price (the README's Helsinki query,
venue documents cached after the first request; nginx serves them) against the bare routes of
``bench/bare_app.py`` under gunicorn's own defaults, access log and metrics on, 2 sync workers,
wrk with 8 connections.  Every round starts each server afresh and loads it in turn (bare, then
Courier, then ``--before REF`` in a temporary worktree), so the shared box's drift lands on all of
them; single rounds swing ~25% here, the medians of the rounds are what compare.

Printed first: server CPU per request (utime + stime of the gunicorn processes from /proc, over
the loaded seconds only) and its ratio to the bare route; then p99 and its ratio.  Target: <= 1.10x
the bare route's CPU, p99 <= 1.2x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_estimate import BODY  # noqa: E402
from bench.bench_pricing import PATH as PRICE_PATH  # noqa: E402
from bench.bench_pricing import nginx_upstream  # noqa: E402
from bench.harness import ROOT, checkout, gunicorn, load, machine, plain_gunicorn, prepared_env, server_usage  # noqa: E402

ESTIMATE = ("POST", "/api/v1/delivery-estimate", BODY)
BARE_ESTIMATE = ("POST", "/echo", BODY)
PRICE = ("GET", PRICE_PATH, None)
BARE_PRICE = ("GET", "/query?" + PRICE_PATH.split("?", 1)[1], None)


def measured(url: str, request: tuple[str, str, str | None], seconds: int) -> tuple[float, float]:
    """(server CPU per request in microseconds, p99 in ms) of one load after a one-second warm-up."""
    method, path, body = request
    load("warm-up", url, path, method=method, body=body, seconds=1, connections=8)
    start = server_usage(url)
    result = load("measured", url, path, method=method, body=body, seconds=seconds, connections=8)
    return (server_usage(url).cpu_s - start.cpu_s) / max(1, result.requests) * 1e6, result.p99_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--before", metavar="REF", help="also serve this commit (a temporary worktree), same rounds")
    args = parser.parse_args()
    print(f"machine: {machine()}; gunicorn sync workers: {args.workers}; wrk, 8 connections, {args.seconds} s; "
          f"{args.rounds} interleaved rounds")
    rows: dict[str, list[tuple[float, float]]] = {}
    with nginx_upstream() as upstream, prepared_env({"COURIER_ACCESS_LOG": "true", "COURIER_LOG_LEVEL": "INFO",
                                                     "COURIER_VENUE_API_URL": upstream}) as env, \
            (checkout(args.before) if args.before else nullcontext()) as before_root:
        servers: list[tuple[str, Callable[[], AbstractContextManager[str]], list[tuple[str, tuple]]]] = [
            ("bare, gunicorn defaults", lambda: plain_gunicorn(env, args.workers, "bench.bare_app:app", "/query"),
             [("bare estimate route", BARE_ESTIMATE), ("bare price route", BARE_PRICE)]),
            ("courier", lambda: gunicorn(env, args.workers, quiet=True, root=ROOT),
             [("estimate", ESTIMATE), ("warm price", PRICE)]),
        ]
        if before_root is not None:
            servers.append((f"courier at {args.before}",
                            lambda: gunicorn(env, args.workers, quiet=True, root=before_root),
                            [(f"estimate at {args.before}", ESTIMATE), (f"warm price at {args.before}", PRICE)]))
        for round_no in range(1, args.rounds + 1):
            for _, serve, requests in servers:
                with serve() as url:
                    for label, request in requests:
                        cpu_us, p99 = measured(url, request, args.seconds)
                        rows.setdefault(label, []).append((cpu_us, p99))
                        print(f"  round {round_no} {label:<28} {cpu_us:6.0f} us/request  p99 {p99:6.2f} ms",
                              flush=True)

    def median(label: str) -> tuple[float, float]:
        return (statistics.median(c for c, _ in rows[label]), statistics.median(p for _, p in rows[label]))

    print("medians (server CPU per request first; ratios to the bare route of the same kind):")
    for label in rows:
        bare = median("bare price route" if "price" in label else "bare estimate route")
        cpu_us, p99 = median(label)
        print(f"  {label:<28} {cpu_us:6.0f} us/request = {cpu_us / bare[0]:.2f}x bare   "
              f"p99 {p99:6.2f} ms = {p99 / bare[1]:.2f}x bare")


if __name__ == "__main__":
    main()
