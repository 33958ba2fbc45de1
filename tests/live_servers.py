"""Courier under a real gunicorn, on a free loopback port, for tests that need real processes."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body) of one GET on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_until_up(port: int, proc: subprocess.Popen, path: str = "/healthz") -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            if http_get(port, path, 1)[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not come up")


@contextmanager
def gunicorn_process(db_url: str, tmp_path: Path, workers: int = 2, **env: str) -> Iterator[int]:
    """gunicorn.conf.py serving wsgi:app on ``db_url``; yields its port once /healthz answers."""
    port = free_port()
    environ = {**os.environ, "COURIER_DATABASE_URL": db_url, "COURIER_BIND": f"127.0.0.1:{port}",
               "COURIER_WORKERS": str(workers), "COURIER_LOG_LEVEL": "WARNING",
               "COURIER_GUNICORN_LOG_LEVEL": "warning", "COURIER_CONTROL_SOCKET": str(tmp_path / "gunicorn.ctl"),
               **env}
    proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(30)
