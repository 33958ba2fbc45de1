"""Distributed offers benchmark: `run-offers --distributed` on 1 and 2 Celery worker processes versus
a local `run-offers` on the same input, the same partner and the same PostgreSQL, in one run.

    .venv/bin/python bench/bench_offers_distributed.py --database-url postgresql://u:p@host/scratch_db \\
        [--members 100000] [--chunk-size 5000] [--workers 1,2]

Needs PostgreSQL (a scratch database: runs are added to it; `.ci/postgres.sh` prints one),
``redis-server`` (started here on a free port) and the ``distributed`` extra. The partner is the
keep-alive reference partner (``python -m services.offers.reference.server``, one uvicorn worker).

Printed per configuration: wall seconds of the command (process start included), scored members/s
and its ratio to the local run, chunk scoring time p50/p95/p99 (claim to commit), queue wait
p50/p95 (enqueued to claimed), coordinator CPU, workers' CPU per 1,000 members and their RSS.
Everything shares this machine's cores (partner, PostgreSQL, Redis, coordinator, workers): the
ratios say what distribution costs here, not what N machines would gain.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_offers import RUSAGE_WRAPPER, keepalive_partner  # noqa: E402
from bench.gen_members import generate  # noqa: E402
from bench.harness import BIN, ROOT, machine  # noqa: E402
from tests.distributed_fixtures import CeleryWorker, RedisServer, process_group_usage  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def run_command(env: dict, path: Path, distributed: bool, chunk_size: int, no_batch: bool) -> dict:
    cmd = [str(BIN / "flask"), "--app", "wsgi", "run-offers", "--input", str(path), "--as-of", "2024-01-05",
           "--max-consecutive-failures", "0", *(["--no-batch"] if no_batch else [])]
    if distributed:
        cmd += ["--distributed", "--chunk-size", str(chunk_size)]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUSAGE_WRAPPER, *cmd], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - started
    usage = next(line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("RUSAGE"))
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
    return {"wall": wall, "exit": proc.returncode, "cpu": float(usage[0]) + float(usage[1])}


def hand_out_only(env: dict, path: Path, chunk_size: int, url: str) -> dict:
    """The coordinator alone (no worker running): reading the input, computing features, storing
    and queueing every chunk, timed from the run's start (and from process start) to its last chunk
    queued; then Ctrl-C ends the run (``interrupted``)."""
    import signal

    from sqlalchemy import create_engine, text

    cmd = [str(BIN / "flask"), "--app", "wsgi", "run-offers", "--input", str(path), "--as-of", "2024-01-05",
           "--distributed", "--chunk-size", str(chunk_size)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    queued_after = None
    for line in proc.stdout:  # type: ignore[union-attr]
        if "waiting for workers" in line:
            queued_after = time.perf_counter() - started
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    engine = create_engine(url)
    with engine.connect() as conn:
        members, span, loop_span, first = conn.execute(text(
            "SELECT sum(c.members), EXTRACT(EPOCH FROM max(c.queued_at) - r.started_at), "
            "EXTRACT(EPOCH FROM max(c.queued_at) - min(c.queued_at)), "
            "(SELECT members FROM offer_run_chunks WHERE run_id = r.id AND chunk_no = 0) FROM offer_run_chunks c "
            "JOIN offer_runs r ON r.id = c.run_id WHERE r.id = (SELECT max(id) FROM offer_runs) "
            "GROUP BY r.id, r.started_at")).one()
    engine.dispose()
    # The loop alone: from the first chunk queued to the last, the members of every chunk but the first.
    return {"members": int(members), "span": float(span), "process_span": queued_after,
            "loop_rate": (int(members) - int(first)) / float(loop_span)}


def last_run(url: str) -> tuple[dict, list[tuple[float, float]]]:
    """The newest run and, per chunk, (scoring seconds, queue wait seconds)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        run = dict(conn.execute(text("SELECT * FROM offer_runs ORDER BY id DESC LIMIT 1")).mappings().one())
        chunks = conn.execute(text(
            "SELECT EXTRACT(EPOCH FROM finished_at - started_at), EXTRACT(EPOCH FROM started_at - queued_at) "
            "FROM offer_run_chunks WHERE run_id = :id AND status = 'done'"), {"id": run["id"]}).all()
    engine.dispose()
    return run, [(float(a), float(b)) for a, b in chunks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="A scratch PostgreSQL database (runs are added).")
    parser.add_argument("--members", type=int, default=100_000, help="Generated members (~90%% scoreable).")
    parser.add_argument("--chunk-size", type=int, default=5000, help="Members per chunk task.")
    parser.add_argument("--workers", default="1,2", help="Worker process counts to measure, comma-separated.")
    parser.add_argument("--no-batch", action="store_true",
                        help="Per-member partner calls (3 per member) instead of the batch endpoints.")
    args = parser.parse_args()
    url = args.database_url.replace("postgresql://", "postgresql+psycopg://", 1) \
        if args.database_url.startswith("postgresql://") else args.database_url

    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="courier-bench-dist-"))
    path = tmp / "members.csv"
    generate(args.members, path)
    redis = RedisServer(tmp)
    try:
        with keepalive_partner() as partner_url:
            env = {**__import__("os").environ, "COURIER_DATABASE_URL": url, "COURIER_CELERY_BROKER_URL": redis.url,
                   "COURIER_SERVICE_URL": partner_url, "COURIER_LOG_LEVEL": "WARNING", "COURIER_LOG_FORMAT": "json"}
            subprocess.run([str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                           capture_output=True)
            print(f"input: {args.members:,} generated members; chunk size {args.chunk_size:,}; partner {partner_url} "
                  f"(keep-alive, {'per-member calls' if args.no_batch else 'batch endpoints'})")
            local = run_command(env, path, False, args.chunk_size, args.no_batch)
            run, _ = last_run(url)
            rows = [("local (baseline)", local, run, [], None)]
            hand_out = hand_out_only(env, path, args.chunk_size, url)
            for count in [int(n) for n in args.workers.split(",")]:
                workers = [CeleryWorker(f"bench{i}", env, tmp / f"worker{i}.log", python=str(BIN / "python"))
                           for i in range(count)]
                try:
                    before = [process_group_usage(w.process.pid) for w in workers]
                    result = run_command(env, path, True, args.chunk_size, args.no_batch)
                    after = [process_group_usage(w.process.pid) for w in workers]
                finally:
                    for worker in workers:
                        worker.close()
                run, chunks = last_run(url)
                worker_cpu = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
                worker_rss = sum(a[1] for a in after)
                rows.append((f"distributed, {count} worker process(es)", result, run, chunks, (worker_cpu, worker_rss)))
    finally:
        redis.close()

    base_rate = rows[0][2]["members_scored"] / rows[0][1]["wall"]
    print(f"\n{'configuration':<34} {'status':<10} {'wall s':>7} {'members/s':>10} {'vs local':>9} "
          f"{'chunk p50/p95/p99 s':>20} {'queue wait p50/p95 s':>21} {'coord CPU s':>11} "
          f"{'workers CPU s/1k':>16} {'workers RSS MB':>14}")
    for label, result, run, chunks, usage in rows:
        rate = run["members_scored"] / result["wall"]
        scoring = [c[0] for c in chunks]
        waits = [c[1] for c in chunks]
        chunk_col = "/".join(f"{percentile(scoring, q):.2f}" for q in (50, 95, 99)) if chunks else "-"
        wait_col = "/".join(f"{percentile(waits, q):.2f}" for q in (50, 95)) if chunks else "-"
        cpu_col = f"{usage[0] / max(1, run['members_scored']) * 1000:.3f}" if usage else "-"
        rss_col = f"{usage[1]:.0f}" if usage else "-"
        print(f"{label:<34} {run['status']:<10} {result['wall']:>7.2f} {rate:>10,.0f} {rate / base_rate:>8.2f}x "
              f"{chunk_col:>20} {wait_col:>21} {result['cpu']:>11.2f} {cpu_col:>16} {rss_col:>14}")
    print(f"\ncoordinator alone (no workers): {hand_out['members']:,} members in chunks, all queued "
          f"{hand_out['span']:.2f} s after the run started ({hand_out['members'] / hand_out['span']:,.0f} members/s: "
          f"input, features, storing and queueing), {hand_out['process_span']:.2f} s after process start; "
          f"storing and queueing alone (first chunk queued to last): {hand_out['loop_rate']:,.0f} members/s")
    if len(rows) > 1:
        mean_chunk = statistics.mean(c[0] for c in rows[-1][3]) if rows[-1][3] else float("nan")
        print(f"\nmean chunk scoring time ({rows[-1][0]}): {mean_chunk:.2f} s for up to {args.chunk_size:,} members")


if __name__ == "__main__":
    main()
