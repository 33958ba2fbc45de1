"""`flask run-offers --output` process start to exit, this tree against another commit, interleaved.

    .venv/bin/python bench/bench_offers_ab.py --before REF [--members 100000] [--runs 3]
                                              [--postgres postgresql+psycopg://user:pass@host/db]

The issue-22 measurement of batch runs end to end: the reference partner (one uvicorn worker,
keep-alive, batch endpoints) serves both; each run gets a fresh database (a new SQLite file, or
the PostgreSQL database dropped and made again: ``--postgres`` names one this bench may drop)
and writes ``--output out.csv``.  The runs alternate between this tree and ``--before`` (a
temporary worktree on the same virtualenv), so the box's drift lands on both; on this shared
2-core machine single runs swing ~25%, medians of interleaved runs are what compare.

Printed per run and as medians: wall seconds (process start to exit) and scored members per
second of it, the run's own scoring phase and features step, and what came after the run ended
(writing the output, the process's exit).  The two output files must hold the same results:
every column but the three latencies is compared.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_offers import keepalive_partner  # noqa: E402
from bench.gen_members import generate  # noqa: E402
from bench.harness import BIN, ROOT, checkout, machine  # noqa: E402

LATENCIES = ("ats_ms", "resp_ms", "offer_ms")


def fresh_database(folder: Path, label: str, postgres: str | None) -> str:
    if postgres is None:
        for suffix in ("", "-wal", "-shm"):
            (folder / f"{label}.db{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{folder / f'{label}.db'}"
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(postgres)
    name = f"{url.database}_{label}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def last_run(database_url: str) -> dict:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT members_scored, step_metrics FROM offer_runs ORDER BY id DESC "
                                      "LIMIT 1")).one()
    engine.dispose()
    steps = row.step_metrics if isinstance(row.step_metrics, dict) else json.loads(row.step_metrics)
    return {"scored": row.members_scored, "steps": steps}


def one_run(root: Path, label: str, members: Path, partner: str, folder: Path, postgres: str | None) -> dict:
    env = {"PATH": "/usr/bin:/bin", "COURIER_LOG_LEVEL": "WARNING", "COURIER_ACCESS_LOG": "false",
           "COURIER_SERVICE_URL": partner, "COURIER_DATABASE_URL": fresh_database(folder, label, postgres)}
    subprocess.run([str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"], cwd=root, env=env, check=True,
                   capture_output=True)
    output = folder / f"{label}.csv"
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "flask"), "--app", "wsgi", "run-offers", "--input", str(members),
                           "--as-of", "2024-01-05", "--output", str(output)], cwd=root, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{label}: run-offers exited {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    run = last_run(env["COURIER_DATABASE_URL"])
    ended = re.search(r"\(([\d.]+) s since the process started\)", proc.stdout + proc.stderr)
    return {"wall": wall, "rate": run["scored"] / wall, "scoring": run["steps"]["ats"]["seconds"],
            "features": run["steps"]["features"]["seconds"],
            "after_run": wall - float(ended.group(1)) if ended else float("nan"), "output": output}


def results(path: Path) -> list[dict]:
    """Every row but its latencies, numbers as numbers: CSV written by polars (since 70a4212) spells
    some floats differently from the csv module (0.0000687... for 6.87...e-05), the same value."""
    def value(cell: str) -> float | str:
        try:
            return float(cell)
        except ValueError:
            return cell

    with open(path, newline="") as handle:
        return [{k: value(v) for k, v in row.items() if k not in LATENCIES} for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, metavar="REF", help="the commit to compare with")
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL database this bench may drop and create "
                        "(with a suffix) instead of SQLite files")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="courier-bench-offers-ab-"))
    members = folder / "members.csv"
    generate(args.members, members)
    database = "PostgreSQL" if args.postgres else "SQLite"
    print(f"machine: {machine()}; {args.members:,} members, batch endpoints, {database}, "
          f"{args.runs} interleaved runs each")
    rows: dict[str, list[dict]] = {"this tree": [], args.before: []}
    with checkout(args.before) as before_root, keepalive_partner() as partner:
        roots = {"this tree": ROOT, args.before: before_root}
        for i in range(args.runs):
            for label, root in roots.items():
                run = one_run(root, "before" if root != ROOT else "after", members, partner, folder, args.postgres)
                rows[label].append(run)
                print(f"  run {i + 1} {label:>12}: wall {run['wall']:.2f} s = {run['rate']:,.0f} scored members/s; "
                      f"features {run['features']:.2f} s, scoring {run['scoring']:.2f} s, "
                      f"after the run {run['after_run']:.2f} s", flush=True)
        same = results(rows["this tree"][-1]["output"]) == results(rows[args.before][-1]["output"])
    print(f"outputs hold the same results (latencies aside): {same}")
    for label, runs in rows.items():
        def median(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(run[key] for run in runs)
        print(f"median {label:>12}: wall {median('wall'):.2f} s = {median('rate'):,.0f} scored members/s; "
              f"features {median('features'):.2f} s, scoring {median('scoring'):.2f} s, "
              f"after the run {median('after_run'):.2f} s")


if __name__ == "__main__":
    main()
