"""Process start-up of the commands, this tree against another commit, interleaved.

    .venv/bin/python bench/bench_startup.py [--before REF] [--runs 5]

Issue 22's third target, measured per run and as medians:

  flask --help      process start to exit (the app found in the working directory, as a user runs it)
  run-offers        the bundled sample (990 members, 890 scored) against the reference partner (one
                    uvicorn worker, keep-alive): process start to its first connection to the partner
                    (the ping), and start to exit

The partner is reached through the tests' TCP relay (``tests.live_servers.PausableTcpProxy``) in
this process, which notes when the first connection arrives, on the same clock as the process
start.  The runs alternate between this tree and ``--before`` (a temporary worktree on the same
virtualenv), each run of ``run-offers`` on a fresh SQLite database.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_offers import keepalive_partner  # noqa: E402
from bench.harness import BIN, ROOT, checkout, machine  # noqa: E402
from tests.live_servers import PausableTcpProxy  # noqa: E402


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(start time, seconds to exit) of one child process."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return started, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="REF", help="the commit to compare with")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.runs} interleaved runs each")
    folder = Path(tempfile.mkdtemp(prefix="courier-bench-startup-"))
    rows: dict[str, dict[str, list[float]]] = {}
    with keepalive_partner() as partner, (checkout(args.before) if args.before else nullcontext()) as before_root:
        address = urlsplit(partner)
        relay = PausableTcpProxy(address.hostname or "127.0.0.1", address.port or 80)
        service = f"{address.scheme}://127.0.0.1:{relay.port}{address.path}"
        roots = {"this tree": ROOT}
        if before_root is not None:
            roots[args.before] = before_root
        for run in range(1, args.runs + 1):
            for label, root in roots.items():
                env = {"PATH": "/usr/bin:/bin", "COURIER_LOG_LEVEL": "WARNING", "COURIER_SERVICE_URL": service,
                       "COURIER_DATABASE_URL": f"sqlite:///{folder / f'{run}-{len(label)}.db'}"}
                _, help_s = timed([str(BIN / "flask"), "--help"], root, env)
                subprocess.run([str(BIN / "flask"), "--app", "wsgi", "db", "upgrade"], cwd=root, env=env,
                               check=True, capture_output=True)
                relay.first_connected_at = None
                started, run_s = timed([str(BIN / "flask"), "--app", "wsgi", "run-offers", "--input",
                                           str(ROOT / "data" / "member_data.csv"), "--as-of", "2024-01-05"], root, env)
                first_call = (relay.first_connected_at - started) if relay.first_connected_at is not None \
                    else float("nan")
                measured = rows.setdefault(label, {"help": [], "first call": [], "sample": []})
                measured["help"].append(help_s)
                measured["first call"].append(first_call)
                measured["sample"].append(run_s)
                print(f"  run {run} {label:>12}: flask --help {help_s:.2f} s; run-offers first partner call "
                      f"{first_call:.2f} s, bundled sample start to exit {run_s:.2f} s", flush=True)
    for label, measured in rows.items():
        print(f"median {label:>12}: flask --help {statistics.median(measured['help']):.2f} s; run-offers first "
              f"partner call {statistics.median(measured['first call']):.2f} s, bundled sample "
              f"{statistics.median(measured['sample']):.2f} s")


if __name__ == "__main__":
    main()
