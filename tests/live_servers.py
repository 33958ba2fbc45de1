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


class PausableTcpProxy:
    """Forwards a loopback port to ``target``; ``down()`` drops every connection and answers new ones
    by closing them at once, as a restarting database server does, until ``up()``.

    ``first_connected_at``: when the first connection since it was last set to None arrived
    (``time.perf_counter``; ``bench/bench_startup.py`` times a command's first partner call by it).
    """

    def __init__(self, host: str, port: int) -> None:
        import threading

        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.serving = threading.Event()
        self.serving.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self.first_connected_at: float | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.first_connected_at is None:
                self.first_connected_at = time.perf_counter()
            if not self.serving.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self) -> None:
        self.serving.clear()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._sockets.clear()

    def up(self) -> None:
        self.serving.set()

    def close(self) -> None:
        self._closed = True
        self.down()
        self.listener.close()
