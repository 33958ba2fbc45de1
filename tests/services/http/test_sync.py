"""The shared HTTP client: retries, backoff, Retry-After, timeouts, deadline, error conversion."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import responses

from services.errors import UpstreamInvalid, UpstreamNotFound, UpstreamTimeout, UpstreamUnavailable
from services.http.policy import HttpPolicy
from services.http.sync import HttpClient

BASE = "http://upstream.test/api"
FAST = HttpPolicy(connect_timeout_s=0.3, read_timeout_s=0.7, retries=3, backoff_factor_s=0.0, backoff_jitter_s=0.0)


@pytest.fixture
def sleeps(monkeypatch):
    """Record urllib3's retry sleeps instead of sleeping."""
    recorded = []
    monkeypatch.setattr("urllib3.util.retry.time.sleep", recorded.append)
    return recorded


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def test_get_retries_on_503_then_succeeds(mock, sleeps):
    mock.get(f"{BASE}/thing", status=503)
    mock.get(f"{BASE}/thing", status=503)
    mock.get(f"{BASE}/thing", json={"ok": True})
    assert HttpClient("up", BASE, FAST).get_json("/thing") == {"ok": True}
    assert len(mock.calls) == 3


def test_gives_up_after_retries_with_our_error(mock, sleeps):
    mock.get(f"{BASE}/thing", status=502)
    with pytest.raises(UpstreamUnavailable) as info:
        HttpClient("up", BASE, FAST).get_json("/thing")
    assert len(mock.calls) == FAST.retries + 1
    assert info.value.status == 503
    assert info.value.details["upstream_status"] == 502


def test_429_after_retries_carries_retry_after_to_our_client(mock, sleeps):
    mock.get(f"{BASE}/thing", status=429, headers={"Retry-After": "4"})
    with pytest.raises(UpstreamUnavailable) as info:
        HttpClient("up", BASE, FAST).get_json("/thing")
    assert info.value.headers["Retry-After"] == "4"


def test_post_is_not_retried_unless_declared_idempotent(mock, sleeps):
    mock.post(f"{BASE}/score", status=503)
    with pytest.raises(UpstreamUnavailable):
        HttpClient("up", BASE, FAST).post_json("/score", {"x": 1})
    assert len(mock.calls) == 1


def test_post_retried_when_declared_idempotent(mock, sleeps):
    mock.post(f"{BASE}/score", status=503)
    mock.post(f"{BASE}/score", json={"prediction": 1.5})
    policy = HttpPolicy(retries=2, retry_post=True, backoff_factor_s=0.0, backoff_jitter_s=0.0)
    assert HttpClient("up", BASE, policy).post_json("/score", {"x": 1}) == {"prediction": 1.5}
    assert len(mock.calls) == 2


def test_every_call_carries_connect_and_read_timeouts(mock):
    mock.get(f"{BASE}/thing", json={})
    HttpClient("up", BASE, FAST).get_json("/thing")
    assert mock.calls[0].request.req_kwargs["timeout"] == (0.3, 0.7)


def test_read_timeout_becomes_upstream_timeout(mock):
    mock.get(f"{BASE}/thing", body=requests.exceptions.ReadTimeout("slow"))
    with pytest.raises(UpstreamTimeout) as info:
        HttpClient("up", BASE, FAST).get_json("/thing")
    assert info.value.status == 504


def test_connection_error_becomes_upstream_unavailable(mock):
    mock.get(f"{BASE}/thing", body=requests.exceptions.ConnectionError("refused"))
    with pytest.raises(UpstreamUnavailable):
        HttpClient("up", BASE, FAST).get_json("/thing")


def test_malformed_json_becomes_upstream_invalid(mock):
    mock.get(f"{BASE}/thing", body="{oops", content_type="application/json")
    with pytest.raises(UpstreamInvalid):
        HttpClient("up", BASE, FAST).get_json("/thing")


@pytest.mark.parametrize(("body", "content_type"), [
    ('{"name": "Caf\u00e9", "n": NaN}'.encode(), "application/json"),  # orjson refuses NaN; json reads it
    ('{"name": "Caf\u00e9"}'.encode("utf-16"), "application/json"),  # no charset: UTF-16 found by its BOM
    ('{"name": "Caf\u00e9"}'.encode("latin-1"), "application/json; charset=iso-8859-1"),  # declared charset
])
def test_json_bodies_read_as_requests_reads_them(mock, body, content_type):
    import math

    mock.get(f"{BASE}/thing", body=body, content_type=content_type)
    doc = HttpClient("up", BASE, FAST).get_json("/thing")
    assert doc["name"] == "Caf\u00e9" and all(math.isnan(v) for k, v in doc.items() if k == "n")


def test_404_becomes_upstream_not_found(mock):
    mock.get(f"{BASE}/thing", status=404, json={"detail": "nope"})
    with pytest.raises(UpstreamNotFound):
        HttpClient("up", BASE, FAST).get_json("/thing")


@pytest.fixture
def scripted_server():
    """A real HTTP server answering GETs from a script of (status, headers, body); the last repeats."""
    script: list = []
    seen: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            seen.append(time.monotonic())
            status, headers, body = script[min(len(seen), len(script)) - 1]
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script, seen
    server.shutdown()
    server.server_close()


def test_429_retry_after_is_honoured_and_capped(scripted_server):
    url, script, seen = scripted_server
    script += [(429, {"Retry-After": "30"}, b""), (200, {"Content-Type": "application/json"}, b'{"ok": 1}')]
    policy = HttpPolicy(retries=2, retry_after_max_s=0.3, backoff_factor_s=0.0, backoff_jitter_s=0.0)
    assert HttpClient("up", url, policy).get_json("/thing") == {"ok": 1}
    assert len(seen) == 2
    assert 0.28 <= seen[1] - seen[0] < 10  # waited for Retry-After, capped at 0.3 s instead of 30 s


def test_backoff_grows_between_retries(scripted_server):
    url, script, seen = scripted_server
    script.append((500, {}, b""))
    policy = HttpPolicy(retries=3, backoff_factor_s=0.1, backoff_jitter_s=0.0, backoff_max_s=5)
    with pytest.raises(UpstreamUnavailable):
        HttpClient("up", url, policy).get_json("/thing")
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert len(seen) == 4
    assert gaps[-1] > gaps[0] * 1.5  # exponential: 0.1, 0.2, 0.4 s


def test_deadline_stops_retrying_a_fast_failing_upstream(scripted_server):
    url, script, seen = scripted_server
    script.append((503, {"Retry-After": "1"}, b""))
    policy = HttpPolicy(connect_timeout_s=0.05, read_timeout_s=0.1, retries=20, retry_after_max_s=0.2,
                        deadline_s=0.5)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable):
        HttpClient("up", url, policy).get_json("/thing")
    assert 2 <= len(seen) <= 4  # the deadline's count, not the 21 attempts retries=20 allows
    assert time.monotonic() - started < 3.0  # generous: without the deadline, 20 waits of 0.2 s = 4 s


@pytest.fixture
def hanging_server():
    """A real TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_hanging_upstream_is_a_504_within_the_deadline(hanging_server):
    policy = HttpPolicy(connect_timeout_s=0.1, read_timeout_s=0.3, retries=5, backoff_factor_s=0.01,
                        backoff_jitter_s=0.0, deadline_s=1.0)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as info:
        HttpClient("up", hanging_server, policy).get_json("/thing")
    elapsed = time.monotonic() - started
    # Without the deadline, 6 attempts x 0.3 s = 1.8 s; with it, no attempt starts that could not end by
    # 1.0 s: 0.3 + 0.3 + 0.3 (the last cut to what is left), counted, not timed.
    assert info.value.attempts in (3, 4) and elapsed >= 0.55
    assert elapsed < 1.0 + 1.0  # generous: a loaded machine adds scheduling delay, never attempts


def test_session_is_built_once_and_reused(mock):
    mock.get(f"{BASE}/a", json={})
    mock.get(f"{BASE}/b", json={})
    client = HttpClient("up", BASE, FAST)
    client.get_json("/a")
    first = client.session
    client.get_json("/b")
    assert client.session is first


def test_environment_proxies_are_not_consulted(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    session = HttpClient("up", BASE, FAST).session
    assert session.trust_env is False


def test_connect_retries_can_be_fewer_than_status_retries():
    from services.http.sync import build_session

    retry = build_session(HttpPolicy(retries=5, connect_retries=1)).get_adapter("http://x").max_retries
    assert (retry.total, retry.connect, retry.status) == (5, 1, 5)


def test_refused_connection_is_retried_only_connect_retries_times():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections to it are refused
    policy = HttpPolicy(retries=5, connect_retries=1, backoff_factor_s=0.2, backoff_jitter_s=0.0)
    with pytest.raises(UpstreamUnavailable) as info:
        HttpClient("up", f"http://127.0.0.1:{port}", policy).get_json("/x")
    assert info.value.attempts == 2  # the first and one retry: not the six retries=5 allows


@pytest.fixture
def raw_server():
    """A loopback server playing one scripted behaviour per connection (the last repeats).

    Behaviours: ``ok`` (JSON, Connection: close), ``hang`` (reads the request, never answers),
    ``malformed`` (200 with a body that is not JSON), ``trickle`` (headers, then one body byte every 0.2 s),
    ``endless`` (a body without Content-Length that never ends), ``declared-huge`` (Content-Length 1 GiB).
    """
    script: list[str] = []
    seen: list[str] = []
    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)

    def answer(conn: socket.socket, behaviour: str) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            body = b'{"ok": 1}'
            if behaviour == "hang":
                stop.wait(10)
            elif behaviour == "malformed":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"
                             b"Connection: close\r\n\r\n" + b'{"ok": ')
            elif behaviour == "endless":  # no Content-Length: a body that ends only when we hang up
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
                chunk = b" " * 65536
                try:
                    while not stop.is_set():
                        conn.sendall(chunk)
                except OSError:
                    pass  # the client hung up: what it should do
            elif behaviour == "declared-huge":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n"
                             b"\r\n" + b" " * 1024)
                stop.wait(2)
            elif behaviour == "trickle":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n")
                while not stop.wait(0.2):
                    conn.sendall(b" ")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (len(body), body))

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            behaviour = script[min(len(seen), len(script) - 1)]
            seen.append(behaviour)
            threading.Thread(target=answer, args=(conn, behaviour), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", script, seen
    stop.set()
    thread.join()
    server.close()


def test_a_hung_attempt_is_retried_within_the_deadline(raw_server):
    url, script, seen = raw_server
    script += ["hang", "ok"]
    policy = HttpPolicy(connect_timeout_s=0.2, read_timeout_s=0.5, retries=3, backoff_factor_s=0.0,
                        backoff_jitter_s=0.0, deadline_s=0.8)
    # The second attempt has only 0.3 s left, less than a whole attempt (0.7 s): it still runs, with
    # its timeouts cut to the time left, instead of the call failing after the first hang.
    assert HttpClient("up", url, policy).get_json("/x") == {"ok": 1}
    assert seen == ["hang", "ok"]


def test_every_attempt_is_cut_to_the_deadline_when_all_hang(raw_server):
    url, script, seen = raw_server
    script.append("hang")
    policy = HttpPolicy(connect_timeout_s=0.2, read_timeout_s=0.5, retries=5, backoff_factor_s=0.0,
                        backoff_jitter_s=0.0, deadline_s=0.8)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        HttpClient("up", url, policy).get_json("/x")
    assert len(seen) == 2  # 0.5 s, then the 0.3 s left; no attempt with less than min_attempt_s (0.1 s)
    assert time.monotonic() - started < 0.8 + 1.0  # generous; 6 attempts of 0.5 s would be 3 s


def test_a_malformed_body_is_retried_like_a_failed_status(raw_server):
    url, script, seen = raw_server
    script += ["malformed", "ok"]
    policy = HttpPolicy(retries=2, backoff_factor_s=0.0, backoff_jitter_s=0.0, deadline_s=2.0)
    assert HttpClient("up", url, policy).get_json("/x") == {"ok": 1}
    assert seen == ["malformed", "ok"]


def test_unusable_data_is_retried_then_reported_with_the_parsers_reason(raw_server):
    url, script, seen = raw_server
    script.append("ok")

    def parse(doc):
        raise ValueError("data without the field we need")

    policy = HttpPolicy(retries=2, backoff_factor_s=0.0, backoff_jitter_s=0.0, deadline_s=2.0)
    with pytest.raises(UpstreamInvalid, match="up sent data without the field we need"):
        HttpClient("up", url, policy).get_json("/x", parse=parse)
    assert len(seen) == 3  # the first attempt and two retries


def test_malformed_bodies_are_not_retried_for_a_post_not_declared_idempotent(raw_server):
    url, script, seen = raw_server
    script += ["malformed", "ok"]
    policy = HttpPolicy(retries=2, backoff_factor_s=0.0, backoff_jitter_s=0.0, deadline_s=2.0)
    with pytest.raises(UpstreamInvalid, match="not JSON"):
        HttpClient("up", url, policy).post_json("/x", {"a": 1})
    assert seen == ["malformed"]


def test_a_trickling_body_is_bounded_by_the_deadline_not_each_read(raw_server):
    url, script, _ = raw_server
    script.append("trickle")  # one byte every 0.2 s: each read is well within the 0.5 s read timeout
    policy = HttpPolicy(connect_timeout_s=0.2, read_timeout_s=0.5, retries=0, deadline_s=0.7)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="did not finish its answer in time"):
        HttpClient("up", url, policy).get_json("/x")
    assert time.monotonic() - started < 0.7 + 2.0  # generous; without the bound: 200 bytes x 0.2 s = 40 s


@pytest.fixture
def keepalive_server():
    """A keep-alive HTTP/1.1 server that writes its headers and its body in two writes (Nagle on),
    like many real servers; counts the connections it accepted."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    connections = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            connections.append(self.client_address)

        def do_GET(self):  # noqa: N802 - http.server API
            body = b'{"ok": 1}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()  # first write: the headers
            self.wfile.write(body)  # second write: held by Nagle until the client ACKs the first

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", connections
    server.shutdown()
    server.server_close()


def test_calls_with_a_deadline_reuse_one_pooled_connection(keepalive_server):
    url, connections = keepalive_server
    client = HttpClient("up", url, HttpPolicy(deadline_s=2.0))
    for _ in range(5):
        assert client.get_json("/x") == {"ok": 1}
    assert len(connections) == 1  # the streamed body, read to its end, gave the connection back


def test_a_server_writing_headers_and_body_apart_costs_no_delayed_ack(keepalive_server):
    url, _ = keepalive_server
    client = HttpClient("up", url, HttpPolicy(deadline_s=2.0))
    client.get_json("/x")
    started = time.monotonic()
    for _ in range(100):
        client.get_json("/x")
    # Waiting for Linux's delayed ACK (40 ms) each time: >= 4 s.  Acknowledging at once: ~1 ms each.
    assert time.monotonic() - started < 2.0


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_an_endless_answer_is_cut_at_the_cap_retried_then_502_and_memory_stays_flat(raw_server):
    url, script, seen = raw_server
    script.append("endless")
    policy = HttpPolicy(read_timeout_s=5.0, retries=2, backoff_factor_s=0.0, backoff_jitter_s=0.0, deadline_s=20.0,
                        max_answer_bytes=1024 * 1024)
    before = rss_kb()
    with pytest.raises(UpstreamInvalid, match="over the 1,048,576-byte cap") as info:
        HttpClient("up", url, policy).get_json("/x")
    assert info.value.status == 502 and len(seen) == 3  # a bad attempt each, retried like a bad body
    assert rss_kb() - before < 32 * 1024  # without the cap: the whole answer, until memory ran out


def test_an_answer_declared_over_the_cap_is_not_read(raw_server):
    url, script, seen = raw_server
    script.append("declared-huge")
    policy = HttpPolicy(retries=0, deadline_s=5.0, max_answer_bytes=1024 * 1024)
    started = time.monotonic()
    with pytest.raises(UpstreamInvalid, match="1,073,741,824 bytes"):
        HttpClient("up", url, policy).get_json("/x")
    assert time.monotonic() - started < 3.0  # generous; reading the gigabyte takes far longer


def test_a_trickling_answer_is_one_bad_attempt_retried_within_the_deadline(raw_server):
    url, script, seen = raw_server
    script += ["trickle", "ok"]  # each read well within the read timeout; the answer as a whole is not
    policy = HttpPolicy(connect_timeout_s=0.2, read_timeout_s=0.5, retries=3, backoff_factor_s=0.0,
                        backoff_jitter_s=0.0, deadline_s=2.5)
    assert HttpClient("up", url, policy).get_json("/x") == {"ok": 1}  # before: 504 after the whole 2.5 s
    assert seen == ["trickle", "ok"]
