"""Offers benchmark: `flask run-offers` end to end against two partner shapes, in one run.

    .venv/bin/python bench/bench_offers.py [--sizes sample,20000,100000] [--million] [--seconds 6]

Partner modes (the reference partner's formulas in both):
- ``keepalive``: ``python -m services.offers.reference.server``: uvicorn, one worker, a plain ASGI
  app, persistent HTTP/1.1 connections: the shape of the task's own partner (FastAPI under one
  uvicorn worker).  gunicorn's ``gthread`` worker with keep-alive was tried first: ~1,300 req/s.
- ``gunicorn``: the reference partner inside the service under ``gunicorn`` (2 sync workers), which
  closes every connection, as ``make run`` serves it.

For each mode the partner is first measured alone (wrk, 64 connections, ATS endpoint; its members/s
ceiling is req/s / 3), then run-offers scores each input size member by member.  Then: the
keep-alive run pinned (partner on CPU 0, client on CPU 1, ``taskset``; the ceiling re-measured
pinned), the batch endpoints on the largest size, and with ``--million`` a 1M-member memory run.

Printed per run: wall seconds (process start included), members/s (scored members / wall; and the
run's own scoring rate), per-step items/s and p50/p95/p99, client CPU seconds per 1,000 members
(user + system of the whole client process tree), partner req/s during scoring, peak RSS of the
client, and members/s as a % of the partner's ceiling.  Sizes are generated members (~90% have
transactions: 20,000 -> ~18k scoreable, 100,000 -> ~90k).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gen_members import generate  # noqa: E402
from bench.harness import BIN, ROOT, free_port, gunicorn, load, machine, prepared_env, served  # noqa: E402

PREFIX = "/partners/reference"
FEATURES = json.dumps({
    "AVG_POINTS_BOUGHT": 2244.4, "AVG_REVENUE_USD": 3.43, "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 133.3,
    "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 1.8, "PCT_BUY_TRANSACTIONS": 0.33, "PCT_GIFT_TRANSACTIONS": 0.39,
    "PCT_REDEEM_TRANSACTIONS": 0.28, "DAYS_SINCE_LAST_TRANSACTION": 325})

# Runs the command and reports the children's CPU and peak RSS (the client and anything it spawned).
RUSAGE_WRAPPER = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print('RUSAGE', u.ru_utime, u.ru_stime, u.ru_maxrss, file=sys.stderr); sys.exit(r)")


@contextmanager
def keepalive_partner(cpus: str | None = None):
    port = free_port()
    cmd = [str(BIN / "python"), "-m", "services.offers.reference.server", "--port", str(port)]
    with served(["taskset", "-c", cpus, *cmd] if cpus else cmd, port, PREFIX + "/") as url:
        yield url


def ceiling(url: str, seconds: int, cpus: str | None = None) -> float:
    """The partner alone: ATS req/s at 64 connections; three calls per member."""
    result = load("partner alone (ats, 64 conn)", url, PREFIX + "/ml/ats/predict", method="POST", body=FEATURES,
                  seconds=seconds, connections=64, cpus=cpus)
    print(f"    {result.row()}")
    return result.rps / 3


def last_run(env: dict) -> dict:
    """The newest run record, read from the bench's SQLite file (no export: it is not part of a run)."""
    import sqlite3

    with sqlite3.connect(env["COURIER_DATABASE_URL"].removeprefix("sqlite:///")) as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM offer_runs ORDER BY id DESC LIMIT 1").fetchone())
    row["step_metrics"] = json.loads(row["step_metrics"])
    return row


def run_offers(env: dict, service_url: str, path: Path, label: str, *, batch: bool = False,
               cpus: str | None = None) -> dict:
    cmd = [str(BIN / "flask"), "--app", "wsgi", "run-offers", "--input", str(path), "--as-of", "2024-01-05",
           "--max-consecutive-failures", "0"]
    if not batch:
        cmd.append("--no-batch")
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUSAGE_WRAPPER, *cmd], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "COURIER_SERVICE_URL": service_url})
    wall = time.perf_counter() - started
    usage = next(line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("RUSAGE"))
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:])
    summary = last_run(env)
    return {"label": label, "wall": wall, "exit": proc.returncode, "cpu": float(usage[0]) + float(usage[1]),
            "rss_mb": int(usage[2]) / 1024, "summary": summary}


def report(run: dict, members_ceiling: float | None, calls_per_member: float = 3.0) -> None:
    s = run["summary"]
    scored, total = s["members_scored"], s["members_total"]
    steps = s["step_metrics"]
    scoring_s = steps["ats"]["seconds"] or 1e-9
    rate_wall = scored / run["wall"]
    rate_scoring = scored / scoring_s
    share = f", {rate_scoring / members_ceiling * 100:.0f}% of the partner's ceiling" if members_ceiling else ""
    print(f"  {run['label']}: {s['status']} (exit {run['exit']}), {scored} scored / {total} recorded, "
          f"wall {run['wall']:.2f} s")
    print(f"    members/s: {rate_wall:,.0f} end to end incl. process start; {rate_scoring:,.0f} while scoring"
          f"{share}")
    print(f"    client CPU {run['cpu'] / max(1, scored) * 1000:.3f} s per 1,000 members ({run['cpu']:.2f} s), "
          f"partner {calls_per_member * scored / scoring_s:,.0f} req/s while scoring, peak RSS {run['rss_mb']:.0f} MB")
    print(f"    {'step':<9} {'items':>8} {'seconds':>8} {'items/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, st in steps.items():
        if name == "retries":
            print(f"    retries: {st['total']}")
            continue
        rate = f"{st['items_per_s']:,.0f}" if st.get("items_per_s") else "-"
        pcts = [f"{st[k]:.2f}" if k in st else "-" for k in ("p50_ms", "p95_ms", "p99_ms")]
        print(f"    {name:<9} {st['items']:>8} {st['seconds']:>8.3f} {rate:>10} {pcts[0]:>8} {pcts[1]:>8} {pcts[2]:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="sample,20000,100000",
                        help="Comma-separated: 'sample' (the bundled file) or a number of generated members.")
    parser.add_argument("--million", action="store_true", help="Also a 1,000,000-member memory run (keep-alive).")
    parser.add_argument("--million-batch", action="store_true",
                        help="Run the 1M members through the batch endpoints (minutes instead of ~6 min).")
    parser.add_argument("--seconds", type=int, default=6, help="Seconds of each partner-alone measurement.")
    parser.add_argument("--modes", default="keepalive,gunicorn", help="Partner modes to run.")
    args = parser.parse_args()
    if not shutil.which("taskset"):
        sys.exit("taskset (util-linux) is needed for the pinned run")
    print(f"machine: {machine()}; load generator: {'wrk' if shutil.which('wrk') else 'python'}")
    tmp = Path(tempfile.mkdtemp(prefix="courier-offers-bench-"))
    inputs: list[tuple[str, Path]] = []
    for size in args.sizes.split(","):
        if size == "sample":
            inputs.append(("sample", ROOT / "data" / "member_data.csv"))
        else:
            path = tmp / f"members-{size}.csv"
            generate(int(size), path, seed=11)
            inputs.append((f"{int(size):,} members", path))
    largest = inputs[-1]
    modes = args.modes.split(",")
    try:
        with prepared_env() as env:
            if "keepalive" in modes:
                print("\n== partner: keep-alive, one process (services.offers.reference.server, uvicorn) ==")
                with keepalive_partner() as url:
                    members_ceiling = ceiling(url, args.seconds)
                    print(f"    ceiling: {members_ceiling:,.0f} members/s")
                    for label, path in inputs:
                        report(run_offers(env, url, path, f"keepalive {label}"), members_ceiling)
                print("\n== pinned: partner on CPU 0, client on CPU 1 ==")
                with keepalive_partner(cpus="0") as url:
                    pinned_ceiling = ceiling(url, args.seconds, cpus="1")
                    print(f"    ceiling (pinned): {pinned_ceiling:,.0f} members/s")
                    label, path = largest
                    report(run_offers(env, url, path, f"keepalive pinned {label}", cpus="1"), pinned_ceiling)
                print("\n== batch endpoints (keep-alive partner) ==")
                with keepalive_partner() as url:
                    label, path = largest
                    report(run_offers(env, url, path, f"keepalive batch {label}", batch=True), None,
                           calls_per_member=3 / 1000)
            if "gunicorn" in modes:
                print("\n== partner: the service under gunicorn, 2 sync workers (a new connection per call) ==")
                port = free_port()
                with gunicorn(env, 2, port=port) as url:
                    members_ceiling = ceiling(url, args.seconds)
                    print(f"    ceiling: {members_ceiling:,.0f} members/s")
                    for label, path in inputs:
                        report(run_offers(env, url, path, f"gunicorn {label}"), members_ceiling)
                    label, path = largest
                    report(run_offers(env, url, path, f"gunicorn batch {label}", batch=True), None,
                           calls_per_member=3 / 1000)
            if args.million:
                print("\n== memory: 100k and 1M members (keep-alive partner) ==")
                million = tmp / "members-1000000.csv"
                generate(1_000_000, million, seed=13)
                hundred_k = tmp / "members-100000-mem.csv"
                generate(100_000, hundred_k, seed=13)
                with keepalive_partner() as url:
                    for label, path in (("100,000 members", hundred_k), ("1,000,000 members", million)):
                        report(run_offers(env, url, path, f"memory {label}", batch=args.million_batch), None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
