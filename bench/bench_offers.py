"""Offers benchmark: feature step, partner capacity, and `flask run-offers` end to end.

    .venv/bin/python bench/bench_offers.py [--members 100000] [--run-members 10000] [--workers 2]
        [--concurrency 8] [--seconds 8]

1. Generates a member file with the sample's shape (``--members``, ~5 rows each) and times the
   feature step on it (rows/s, peak RSS of that process).  Target >= 1M rows/s.
2. Starts the reference partner under gunicorn (sync workers) and measures what it can take per
   endpoint with the load generator; its member capacity is 1 / (1/ats + 1/resp + 1/offer).
3. Runs ``flask run-offers`` end to end on a ``--run-members`` file against that partner and
   prints members/s per step, end to end, peak RSS, and the share of the partner's capacity.
   Target: >= 90% of the partner's member capacity.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gen_members import generate  # noqa: E402
from bench.harness import BIN, HEADER, ROOT, gunicorn, load, machine, prepared_env  # noqa: E402

FEATURES = json.dumps({
    "AVG_POINTS_BOUGHT": 2244.4, "AVG_REVENUE_USD": 3.43, "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 133.3,
    "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 1.8, "PCT_BUY_TRANSACTIONS": 0.33, "PCT_GIFT_TRANSACTIONS": 0.39,
    "PCT_REDEEM_TRANSACTIONS": 0.28, "DAYS_SINCE_LAST_TRANSACTION": 325})

FEATURE_PROBE = """
import resource, sys, time
from datetime import date
from services.offers.features import compute_features
t = time.perf_counter()
table = compute_features(sys.argv[1], date(2024, 1, 5))
s = time.perf_counter() - t
print(table.rows_read, table.features.height, s, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def feature_step(path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", FEATURE_PROBE, str(path)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    rows, members, seconds, rss_kb = int(out[0]), int(out[1]), float(out[2]), int(out[3])
    print(f"feature step: {rows} rows, {members} members in {seconds:.3f} s = {rows / seconds / 1e6:.2f}M rows/s, "
          f"peak RSS {rss_kb / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--run-members", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--processes", default="1,2", help="Comma-separated scoring process counts to run.")
    args = parser.parse_args()
    print(f"machine: {machine()}; partner: gunicorn {args.workers} sync workers")
    tmp = Path(tempfile.mkdtemp(prefix="courier-offers-bench-"))
    big = tmp / "members_big.csv"
    rows = generate(args.members, big)
    print(f"generated {args.members} members, {rows} rows ({big.stat().st_size / 1e6:.1f} MB)")
    feature_step(big)
    run_file = tmp / "members_run.csv"
    run_rows = generate(args.run_members, run_file, seed=11)

    with prepared_env() as env, gunicorn(env, args.workers) as url:
        prefix = "/partners/reference"
        results = [
            load("partner ats", url, prefix + "/ml/ats/predict", method="POST", body=FEATURES, seconds=args.seconds,
                 connections=args.workers * 2),
            load("partner resp", url, prefix + "/ml/resp/predict", method="POST", body=FEATURES,
                 seconds=args.seconds, connections=args.workers * 2),
            load("partner offer", url, prefix + "/offer/assign", method="POST",
                 body='{"ats_prediction": 340.7, "resp_prediction": 0.02}', seconds=args.seconds,
                 connections=args.workers * 2),
        ]
        print(HEADER)
        for r in results:
            print(r.row())
        capacity = 1 / sum(1 / r.rps for r in results)
        print(f"partner capacity at 3 calls per member: {capacity:.0f} members/s")

        partners = tmp / "partners.toml"
        partners.write_text((ROOT / "data/partners.toml").read_text().replace("http://127.0.0.1:8000", url))
        run_env = {**env, "COURIER_PARTNERS_FILE": str(partners)}
        runs = []
        for processes in [int(p) for p in args.processes.split(",")]:
            output = tmp / f"results-{processes}.csv"
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c",
                 "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
                 "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                 "sys.exit(r)",
                 str(BIN / "flask"), "--app", "wsgi", "run-offers", "--input", str(run_file), "--as-of",
                 "2024-01-05", "--concurrency", str(args.concurrency), "--processes", str(processes),
                 "--output", str(output)],
                cwd=ROOT, env=run_env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            print(proc.stdout)
            peak = next((line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")), "0")
            runs.append((processes, wall, proc.returncode, int(peak), json.loads(Path(str(output) + ".summary.json").read_text())))
    for processes, wall, code, peak, summary in runs:
        sent = summary["members_scored"] + summary["members_failed"]
        seconds = summary["step_metrics"]["offer"]["seconds"]
        rate = sent / seconds if seconds else 0
        print(f"run-offers --processes {processes}: {run_rows} rows, {summary['members_total']} members ({sent} sent) "
              f"in {wall:.2f} s wall incl. start-up, exit {code}, peak RSS {peak / 1024:.0f} MiB (largest process); "
              f"scoring {rate:.0f} members/s = {rate / capacity * 100:.0f}% of the partner's {capacity:.0f} members/s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
