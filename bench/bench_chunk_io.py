"""Chunk I/O of a distributed offers run, phase by phase, on a real database:

- **hand-out** (coordinator): from the scan's feature frame to a stored chunk, committed — what caps how
  fast the coordinator can feed workers (the Celery send, ~1 ms a chunk, is measured apart);
- **claim** (worker): lock the chunk, read its members back as rows to score;
- **record** (worker): ``commit_chunk`` of the chunk's results, committed — what a worker spends besides
  scoring.

    .venv/bin/python bench/bench_chunk_io.py --database-url postgresql+psycopg://u:p@host/scratch_db \\
        [--members 100000] [--chunk-size 5000] [--repeat 3]

The database must be migrated (``flask db upgrade``); runs are added to it. Figures are medians of
``--repeat`` runs, each over every chunk of ``--members`` synthetic members with the 8 standard
features. Prints members (or rows) per second per phase and the per-chunk milliseconds behind them.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine  # noqa: E402


def feature_frame(members: int):
    import polars as pl

    from services.offers.result_shape import FEATURE_COLUMNS

    rng = random.Random(7)
    columns: dict[str, list] = {"member_id": [f"member-{i:08d}" for i in range(members)]}
    for name in FEATURE_COLUMNS:  # the 8 standard features, each a column of the results table
        columns[name] = ([rng.randrange(0, 400) for _ in range(members)] if name.startswith("DAYS")
                         else [rng.uniform(0, 500) for _ in range(members)])
    return pl.DataFrame(columns)


def outcomes_of(rows: list[dict]) -> list:
    from services.offers.runs.recording import MemberOutcome

    return [MemberOutcome(member_id=row["member_id"], status="scored",
                          features={k: v for k, v in row.items() if k != "member_id"},
                          ats_prediction=12.5, resp_prediction=0.42, offer="points_multiplier",
                          ats_ms=0.8, resp_ms=0.7, offer_ms=0.9) for row in rows]


def database_cpu_s() -> float:
    """CPU seconds of every local ``postgres`` process so far (0 when there are none or /proc is
    unreadable): what the database server spent, beside the client's own CPU."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)
            if not fields[0].endswith("(postgres"):
                continue
            parts = fields[1].split()
            total += int(parts[11]) + int(parts[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


def one_pass(sessions, frame, chunk_size: int) -> dict[str, float]:
    from services.offers.runs.distributed import chunks
    from services.offers.runs.recording import create_run

    with sessions() as session, session.begin():
        run_id = create_run(session, partner="bench", input_path="bench.csv", input_sha256="0" * 64,
                            as_of=date(2024, 1, 5), concurrency=1).id
    compact = hasattr(chunks, "encode_inputs")
    timings: dict[str, list[float]] = {"hand-out": [], "claim": [], "record": []}
    server: dict[str, float] = {}
    numbers = []
    server_before = database_cpu_s()
    started = time.perf_counter()
    if compact:
        for chunk_no, part in chunks.cut_frames([frame], chunk_size):
            with sessions() as session, session.begin():
                chunks.store_chunk(session, run_id, chunk_no, part)
            numbers.append(chunk_no)
    else:  # the JSON rows of commit 798ed17 and before
        for chunk_no, rows in chunks.cut_chunks(frame.iter_rows(named=True), chunk_size):
            with sessions() as session, session.begin():
                chunks.store_chunk(session, run_id, chunk_no, rows)
            numbers.append(chunk_no)
    timings["hand-out"].append(time.perf_counter() - started)
    server["hand-out"], server_before = database_cpu_s() - server_before, database_cpu_s()
    members = frame.height
    claimed_rows = []
    started = time.perf_counter()
    for chunk_no in numbers:
        with sessions() as session, session.begin():
            claimed = chunks.claim_chunk(session, run_id, chunk_no, "bench", 3)
            claimed_rows.append(list(claimed.rows))
    timings["claim"].append(time.perf_counter() - started)
    server["claim"], server_before = database_cpu_s() - server_before, database_cpu_s()
    all_outcomes = [outcomes_of(rows) for rows in claimed_rows]
    started = time.perf_counter()
    for chunk_no, outcomes in zip(numbers, all_outcomes, strict=True):
        with sessions() as session, session.begin():
            done = chunks.commit_chunk(session, run_id, chunk_no, outcomes, {"members": len(outcomes)})
            assert str(done.value) == "committed", done
    timings["record"].append(time.perf_counter() - started)
    server["record"] = database_cpu_s() - server_before
    return ({phase: members / sum(values) for phase, values in timings.items()} | {"chunks": len(numbers)}
            | {f"{phase} db": cpu / members * 1e6 for phase, cpu in server.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from services.db import make_engine, make_session_factory

    engine = make_engine(args.database_url)
    sessions = make_session_factory(engine)
    frame = feature_frame(args.members)
    print(f"machine: {machine()}\n{args.members:,} members, chunks of {args.chunk_size:,}, "
          f"{engine.dialect.name}, median of {args.repeat}")
    passes = [one_pass(sessions, frame, args.chunk_size) for _ in range(args.repeat)]
    chunks = passes[0]["chunks"]
    for phase in ("hand-out", "claim", "record"):
        rate = statistics.median(p[phase] for p in passes)
        per_chunk_ms = args.members / rate / chunks * 1000
        unit = "result rows/s" if phase == "record" else "members/s"
        db_us = statistics.median(p[f"{phase} db"] for p in passes)
        print(f"{phase:<9} {rate:>12,.0f} {unit:<14} {per_chunk_ms:7.1f} ms per chunk   "
              f"database CPU {db_us:5.1f} us per member   (runs: {', '.join(f'{p[phase]:,.0f}' for p in passes)})")
    engine.dispose()


if __name__ == "__main__":
    main()
