"""Real components for distributed-run tests: a Redis server and Celery worker processes.

Both are started by the tests themselves (Debian's ``redis-server`` on a free port in a temporary
folder; ``celery -A wsgi:celery_app worker`` from the project root); `.ci/run` installs Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.live_servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def redis_binary() -> str | None:
    return shutil.which("redis-server") or next((p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server")
                                                 if os.path.exists(p)), None)


class MissingComponent(Exception):
    """A server these tests or benches need is not installed here."""


class RedisServer:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        binary = redis_binary()
        if binary is None:
            raise MissingComponent("redis-server is not installed (apt-get install redis-server; .ci/run does)")
        self.port = port or free_port()
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
                                         "--save", "", "--appendonly", "no"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class CeleryWorker:
    """``celery -A wsgi:celery_app worker`` in its own process group (so SIGKILL takes it all)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, concurrency: int = 1,
                 python: str = sys.executable, queues: str | None = None, pool: str = "prefork") -> None:
        self.name = name
        self.hostname = f"{name}@courier-test"
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [python, "-m", "celery", "-A", "wsgi:celery_app", "worker", "--pool", pool,
             "--concurrency", str(concurrency), "--hostname", self.hostname, "--without-gossip", "--without-mingle",
             "--loglevel", "INFO", *(["-Q", queues] if queues else [])],
            cwd=ROOT, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while b" ready." not in log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"celery worker {name} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: a machine lost mid-chunk."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.log.close()


def process_group_usage(pgid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MB) summed over the live processes of a process group, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    page_mb = os.sysconf("SC_PAGE_SIZE") / 1e6
    cpu = rss = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ...
            cpu += (int(fields[11]) + int(fields[12])) / ticks
            rss += int(fields[21]) * page_mb
    return cpu, rss


def coordinator_worker(env: dict[str, str], log_path: Path) -> CeleryWorker:
    """The worker that coordinates runs submitted over REST: the ``courier.runs`` queue, threads (a
    coordinator mostly waits), as the compose file and the README run it."""
    return CeleryWorker("runs", env, log_path, concurrency=4, queues="courier.runs", pool="threads")


def worker_settings(database_url: str, redis: RedisServer, partner, **more: str) -> dict[str, str]:
    """COURIER_* variables the web app, the workers and the test share: the database, the broker,
    the reference partner, JSON logs; plus ``more`` (names without the COURIER_ prefix)."""
    return {"COURIER_DATABASE_URL": database_url, "COURIER_CELERY_BROKER_URL": redis.url,
            "COURIER_SERVICE_URL": partner.service_url, "COURIER_LOG_FORMAT": "json",
            **{f"COURIER_{name}": value for name, value in more.items()}}


def app_on_fresh_postgres(url: str, settings: dict[str, str], partner):
    """An app on a freshly migrated schema at ``url``, configured by ``settings`` (COURIER_* variables,
    set in the environment so the workers' processes and this app agree; conftest restores it)."""
    from app import create_app
    from tests.offers_fixtures import fresh_postgres

    fresh_postgres(url)
    for key, value in settings.items():
        os.environ[key] = value
    app = create_app({"ACCESS_LOG": False, "TESTING": True})
    partner.fail.clear()
    return app
