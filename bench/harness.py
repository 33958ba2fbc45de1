"""Shared benchmark plumbing: a migrated+seeded temporary database, gunicorn, and a load generator.

Load comes from ``wrk`` when it is installed (``apt-get install wrk``: a C load generator costs
the 2-core box far less CPU than a Python one), otherwise from a multi-process Python generator.
Everything binds to 127.0.0.1.  Results are printed as a table and returned as dicts.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WRK_LUA = Path(__file__).with_name("wrk_report.lua")


@dataclass
class LoadResult:
    label: str
    requests: int
    seconds: float
    failed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        return (f"{self.label:<34} {self.rps:>9.0f} {self.p50_ms:>8.2f} {self.p95_ms:>8.2f} {self.p99_ms:>8.2f} "
                f"{self.failed:>7} {self.failed / max(1, self.requests) * 100:>6.2f}%  ({self.tool})")


HEADER = f"{'scenario':<34} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'failed':>7} {'fail%':>7}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flask(env: dict, *args: str) -> str:
    out = subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout


@contextmanager
def prepared_env(extra: dict | None = None):
    """A temporary SQLite database, migrated and seeded; yields the environment to run Courier with."""
    tmp = Path(tempfile.mkdtemp(prefix="courier-bench-"))
    env = {**os.environ, "COURIER_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}", "COURIER_LOG_LEVEL": "WARNING",
           "COURIER_ACCESS_LOG": "false", **(extra or {})}
    try:
        flask(env, "db", "upgrade")
        flask(env, "seed-venues")
        yield env
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def wait_http(url: str, timeout: float = 30.0) -> None:
    host, port = url.split("//")[1].split("/")[0].split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=1)
            conn.request("GET", "/" + url.split("//")[1].split("/", 1)[1] if "/" in url.split("//")[1] else "/")
            if conn.getresponse().status < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


@contextmanager
def checkout(ref: str):
    """``ref`` in a temporary git worktree, served by the same virtualenv: the code of another commit
    measured in the same run as the working tree (``--before REF``), so the ratio is not noise
    between runs minutes apart."""
    path = Path(tempfile.mkdtemp(prefix="courier-bench-ref-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(path), ref], cwd=ROOT, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)
        shutil.rmtree(path.parent, ignore_errors=True)


def measured_with_baseline(measure: Callable[[Path, str], dict], label: str, before: str | None) -> tuple[dict, dict]:
    """``measure(root, label)`` on the working tree, then (``--before REF``) on that commit in a
    temporary worktree; the second dict is empty without ``before``."""
    ours = measure(ROOT, label)
    if not before:
        return ours, {}
    with checkout(before) as tree:
        return ours, measure(tree, f"{label} at {before}")


@contextmanager
def served(cmd: list[str], port: int, health_path: str, env: dict | None = None, quiet: bool = False,
           cwd: Path = ROOT):
    """Run a server command on ``port`` until the block ends; yields its base URL once it answers.

    ``quiet``: its stderr (log lines, e.g. one access line per request) goes to /dev/null: still
    written, as in production, but not onto the terminal.
    """
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL if quiet else None)
    try:
        wait_http(f"http://127.0.0.1:{port}{health_path}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def gunicorn(env: dict, workers: int, port: int | None = None, target: str = "wsgi:app", health: str = "/healthz",
             quiet: bool = False, root: Path = ROOT):
    """gunicorn with Courier's gunicorn.conf.py serving ``target`` (another app: same settings), from
    ``root`` (another checkout: gunicorn puts its directory first on sys.path)."""
    port = port or free_port()
    with served([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", target], port, health, quiet=quiet, cwd=root,
                env={**env, "COURIER_BIND": f"127.0.0.1:{port}", "COURIER_WORKERS": str(workers),
                     "COURIER_GUNICORN_LOG_LEVEL": "warning"}) as url:
        yield url


@contextmanager
def plain_gunicorn(env: dict, workers: int, target: str, health: str):
    """gunicorn with its own defaults (no gunicorn.conf.py) serving ``target``: the bare route as a
    reviewer serves it, so a ratio against it does not hide what our configuration costs."""
    port = free_port()
    with served([str(BIN / "gunicorn"), "--workers", str(workers), "--bind", f"127.0.0.1:{port}", target], port,
                health, quiet=True, env={**env, "COURIER_BIND": f"127.0.0.1:{port}"}) as url:  # found by server_usage
        yield url


def _wrk(label: str, url: str, path: str, method: str, body: str | None, seconds: int, connections: int,
         cpus: str | None = None, requests_file: str | None = None) -> LoadResult:
    env = {**os.environ, "WRK_METHOD": method, "WRK_BODY": body or "", "WRK_REQUESTS_FILE": requests_file or ""}
    pin = ["taskset", "-c", cpus] if cpus else []
    out = subprocess.run([*pin, "wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--timeout",
                          "5s", "-s", str(WRK_LUA), url + path], env=env, capture_output=True, text=True,
                         check=True).stdout
    report = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    failed = sum(report[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_status",
                                     "errors_timeout"))
    return LoadResult(label, report["requests"], report["duration_us"] / 1e6, failed, report["p50_us"] / 1000,
                      report["p95_us"] / 1000, report["p99_us"] / 1000, "wrk")


def _py_worker(args):
    host, port, path, method, body, seconds, threads = args
    import threading

    latencies: list[float] = []
    failures = [0]
    stop_at = time.monotonic() + seconds
    headers = {"Content-Type": "application/json"} if body else {}

    def loop():
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(host, port, timeout=5)
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                conn.close()
                ok = resp.status < 400
            except OSError:
                ok = False
            latencies.append(time.perf_counter() - started)
            if not ok:
                failures[0] += 1

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies, failures[0]


def _python_load(label, url, path, method, body, seconds, connections) -> LoadResult:
    host, port = url.split("//")[1].split(":")
    procs = 2
    started = time.monotonic()
    with mp.Pool(procs) as pool:
        job = (host, int(port), path, method, body, seconds, max(1, connections // procs))
        parts = pool.map(_py_worker, [job] * procs)
    elapsed = time.monotonic() - started
    lat = sorted(x for part in parts for x in part[0])
    failed = sum(part[1] for part in parts)
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return LoadResult(label, len(lat), elapsed, failed, q[49] * 1000, q[94] * 1000, q[98] * 1000, "python")


def load(label: str, url: str, path: str, *, method: str = "GET", body: str | None = None, seconds: int = 10,
         connections: int = 8, cpus: str | None = None, requests_file: str | None = None) -> LoadResult:
    """``cpus`` pins wrk (taskset list); the Python generator ignores it.

    ``requests_file``: draw each request from this file ("METHOD<TAB>PATH<TAB>BODY" lines; wrk only).
    """
    if shutil.which("wrk") and not os.environ.get("COURIER_BENCH_PYTHON_LOAD"):
        return _wrk(label, url, path, method, body, seconds, connections, cpus, requests_file)
    if requests_file:
        raise RuntimeError("mixed request sets need wrk (apt-get install wrk)")
    return _python_load(label, url, path, method, body, seconds, connections)


def median_load(runs: int, label: str, url: str, path: str, **kwargs) -> LoadResult:
    """The run with the median req/s out of ``runs`` (its percentiles come with it)."""
    results = sorted((load(label, url, path, **kwargs) for _ in range(runs)), key=lambda r: r.rps)
    return results[len(results) // 2]


def compare_row(ours: LoadResult, bare: LoadResult, baseline: str = "bare") -> str:
    """Our req/s as a % of the baseline's (the bare route, or ``--before``), and our p99 as a multiple of its p99."""
    return (f"{ours.label:<40} {ours.rps:>8.0f} req/s = {ours.rps / bare.rps * 100:5.1f}% of {baseline} "
            f"({bare.rps:.0f}); p99 {ours.p99_ms:.2f} ms = {ours.p99_ms / max(bare.p99_ms, 1e-9):.2f}x {baseline} "
            f"({bare.p99_ms:.2f} ms)")


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {os.uname().sysname} {os.uname().machine}"


@dataclass
class ServerUsage:
    """CPU seconds used so far by a server's processes (master and workers) and the workers' RSS."""

    cpu_s: float
    rss_kb: list[int]


def server_usage(url: str) -> ServerUsage:
    """Read /proc for the processes listening as ``url`` (found by COURIER_BIND in their environment)."""
    bind = url.split("//", 1)[1].encode()
    tick = os.sysconf("SC_CLK_TCK")
    cpu, rss = 0.0, []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if b"COURIER_BIND=" + bind not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/status") as handle:
                status = handle.read()
        except OSError:
            continue
        cpu += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        ppid = int(fields[1])
        if ppid != os.getpid():  # a worker (the master is our child)
            rss.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))))
    return ServerUsage(cpu, sorted(rss))


def usage_row(label: str, before: ServerUsage, after: ServerUsage, requests: int) -> str:
    per_request_us = (after.cpu_s - before.cpu_s) / max(1, requests) * 1e6
    return f"{label:<40} server CPU {per_request_us:6.0f} us per request; worker RSS {after.rss_kb} KB"


def metrics_cost(env_extra: dict, workers: int, runs: int, label: str, path: str, **load_kwargs) -> str:
    """The same load on Courier with Prometheus metrics on and off, in one run (issue 11: under 10%)."""
    cost = {}
    for state, extra in (("on", {}), ("off", {"COURIER_METRICS_ENABLED": "false"})):
        with prepared_env({"COURIER_ACCESS_LOG": "true", "COURIER_LOG_LEVEL": "INFO", **env_extra, **extra}) as env, \
                gunicorn(env, workers, quiet=True) as url:
            load("warm-up", url, path, connections=8, **{**load_kwargs, "seconds": 2})
            cost[state] = median_load(runs, f"{label} metrics {state} c=64", url, path, connections=64, **load_kwargs)
    return (f"metrics cost: {cost['on'].rps:.0f} req/s with metrics, {cost['off'].rps:.0f} without "
            f"({(1 - cost['on'].rps / cost['off'].rps) * 100:+.1f}% slower with them)")
