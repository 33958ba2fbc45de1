"""gunicorn as deployed: slow clients behind the buffering proxy (deploy/nginx-courier.conf), control sockets."""

from __future__ import annotations

import http.client
import os
import runpy
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.live_servers import ROOT, free_port, gunicorn_process, http_get, wait_until_up


def slow_client(port: int) -> socket.socket:
    """A client that sends half a request line and then nothing (a phone in a tunnel, or an attack)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    return sock


def test_each_instance_gets_its_own_control_socket(monkeypatch):
    paths = set()
    for bind in ("127.0.0.1:8000", "127.0.0.1:8001", "0.0.0.0:8000"):
        monkeypatch.setenv("COURIER_BIND", bind)
        monkeypatch.delenv("COURIER_CONTROL_SOCKET", raising=False)
        paths.add(runpy.run_path(str(ROOT / "gunicorn.conf.py"))["control_socket"])
    assert len(paths) == 3
    monkeypatch.setenv("COURIER_CONTROL_SOCKET", "/run/courier/a.ctl")
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["control_socket"] == "/run/courier/a.ctl"


def test_gunicorn_builds_no_access_line_of_its_own():
    """The app writes the access line. With ``logconfig_dict`` set, stock gunicorn also built its own
    line's atoms for every request and threw them away: ~50 us of a worker's CPU per request."""
    code = ("import runpy\n"
            "from gunicorn.config import Config\n"
            "settings = runpy.run_path('gunicorn.conf.py')\n"
            "cfg = Config()\n"
            "for name in ('logger_class', 'logconfig_dict', 'loglevel', 'errorlog', 'accesslog'):\n"
            "    if name in settings:\n"
            "        cfg.set(name, settings[name])\n"
            "logger = cfg.logger_class(cfg)\n"
            "built = []\n"
            "logger.atoms = lambda *args: built.append(args) or {}\n"
            "logger.access(None, None, {}, 0.01)\n"
            "logger.error('still logged')\n"
            "print('atoms built:', len(built))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "atoms built: 0"
    assert '"msg": "still logged"' in result.stderr  # gunicorn's own lines: JSON, as before


@pytest.fixture
def gunicorn_server(db_url, tmp_path):
    with gunicorn_process(db_url, tmp_path) as port:
        yield port


@pytest.fixture
def nginx_proxy(gunicorn_server, tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run installs it)")
    port = free_port()
    server_block = (ROOT / "deploy" / "nginx-courier.conf").read_text()
    server_block = server_block.replace("listen 80;", f"listen 127.0.0.1:{port};").replace(
        "server 127.0.0.1:8000;", f"server 127.0.0.1:{gunicorn_server};")
    temp = {name: tmp_path / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off;
pid {tmp_path / 'nginx.pid'};
error_log {tmp_path / 'error.log'} warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp['body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
{server_block}
}}
""")
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_until_up(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_slow_clients_hold_every_sync_worker_without_a_proxy(gunicorn_server):
    held = [slow_client(gunicorn_server) for _ in range(2)]  # as many as workers
    try:
        time.sleep(0.2)  # let each worker accept one of them
        with pytest.raises(OSError):  # socket.timeout: no worker is free for 30 s (COURIER_TIMEOUT)
            http_get(gunicorn_server, "/healthz", timeout=1.0)
    finally:
        for sock in held:
            sock.close()


def test_behind_the_buffering_proxy_slow_clients_hold_no_worker(nginx_proxy):
    held = [slow_client(nginx_proxy) for _ in range(10)]  # five times the workers
    try:
        time.sleep(0.2)
        for _ in range(5):
            assert http_get(nginx_proxy, "/healthz", timeout=5)[0] == 200
    finally:
        for sock in held:
            sock.close()


def test_the_proxy_passes_a_request_id_through_or_makes_one(nginx_proxy):
    conn = http.client.HTTPConnection("127.0.0.1", nginx_proxy, timeout=5)
    conn.request("GET", "/healthz", headers={"X-Request-ID": "client-chosen-1"})
    assert conn.getresponse().getheader("X-Request-ID") == "client-chosen-1"
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", nginx_proxy, timeout=5)
    conn.request("GET", "/healthz")
    assert len(conn.getresponse().getheader("X-Request-ID")) == 32  # nginx's $request_id
    conn.close()
