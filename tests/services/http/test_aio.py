"""The batch scorer's non-blocking client: same policy and the same errors as the sync client.

Unit tests script the transport (``AsyncHttpClient._send``: one exchange or a ``TransportError``)
and, like ``responses``, fail if a scripted answer was never used; the transport itself is tested
against live loopback servers.
"""

import asyncio
import json
import socket

import pytest

from services.errors import UpstreamInvalid, UpstreamNotFound, UpstreamTimeout, UpstreamUnavailable
from services.http.aio import AsyncHttpClient
from services.http.policy import HttpPolicy
from services.http.transport import TransportError

BASE = "http://upstream.test/api"
FAST = HttpPolicy(connect_timeout_s=0.3, read_timeout_s=0.7, retries=3, backoff_factor_s=0.0, backoff_jitter_s=0.0,
                  retry_post=True)


@pytest.fixture
def sleeps(monkeypatch):
    """Record the client's retry waits instead of sleeping."""
    recorded = []

    async def fake_sleep(seconds):
        recorded.append(seconds)

    monkeypatch.setattr("services.http.aio.asyncio.sleep", fake_sleep)
    return recorded


class Transport:
    """Scripted exchanges, answered in order; records every call."""

    def __init__(self) -> None:
        self.script: list = []
        self.sent: list[tuple[str, str]] = []

    def _add(self, method, path, status=200, body="{}", headers=None, payload=None, exception=None):
        import json

        if payload is not None:
            body = json.dumps(payload)
        self.script.append((method, path, exception or (status, dict(headers or {}), body.encode())))

    def post(self, path, **kw):
        self._add("POST", path, **kw)

    def get(self, path, **kw):
        self._add("GET", path, **kw)

    async def send(self, method, path, body):
        self.sent.append((method, path))
        assert self.script, f"unexpected call {method} {path}"
        expected_method, expected_path, answer = self.script.pop(0)
        assert (method, path) == (expected_method, expected_path)
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def mock(monkeypatch):
    transport = Transport()
    monkeypatch.setattr(AsyncHttpClient, "_send", lambda self, method, path, body: transport.send(method, path, body))
    yield transport
    assert not transport.script, f"scripted answers never used: {transport.script}"


def call(policy, method, path="/thing", body=None, events=None):
    async def main():
        async with AsyncHttpClient("up", BASE, policy, on_retry=events.append if events is not None else None) as c:
            if method == "GET":
                return await c.get_json(path)
            return await c.post_json(path, body or b"{}")

    return asyncio.run(main())


def count(mock, method="POST", path="/thing"):
    return sum(1 for m, p in mock.sent if m == method and p == path)


def test_post_retries_on_503_then_succeeds_and_reports_each_retry(mock, sleeps):
    events = []
    mock.post("/thing", status=503)
    mock.post("/thing", status=503)
    mock.post("/thing", payload={"ok": True})
    assert call(FAST, "POST", events=events) == {"ok": True}
    assert count(mock) == 3
    assert [e.reason for e in events] == ["status 503", "status 503"] and sleeps == [0.0, 0.0]


def test_post_is_not_retried_unless_the_policy_declares_it_idempotent(mock, sleeps):
    plain = HttpPolicy(retries=3, backoff_factor_s=0.0, backoff_jitter_s=0.0)  # retry_post False
    mock.post("/thing", status=503, headers={"Retry-After": "7"})
    with pytest.raises(UpstreamUnavailable) as info:
        call(plain, "POST")
    assert count(mock) == 1
    assert info.value.retry_after == 7 and info.value.details["upstream_status"] == 503


def test_retries_exhausted_is_503_with_the_upstream_status(mock, sleeps):
    for _ in range(4):
        mock.get("/thing", status=502)
    with pytest.raises(UpstreamUnavailable, match="answered 502 after retries"):
        call(FAST, "GET")
    assert count(mock, "GET") == 4  # the first try and three retries


def test_backoff_is_urllib3s_own_for_the_same_history(mock, sleeps):
    from services.http.policy import retry_of

    policy = HttpPolicy(retries=4, backoff_factor_s=0.1, backoff_jitter_s=0.0, backoff_max_s=0.3, retry_post=True)
    for _ in range(4):
        mock.post("/thing", status=500)
    mock.post("/thing", payload=[])
    assert call(policy, "POST") == []
    retry, expected = retry_of(policy), []
    for _ in range(4):  # what urllib3 (the sync client) would wait after the same four 500s
        retry = retry.increment("POST", BASE + "/thing", response=type("R", (), {
            "status": 500, "headers": {}, "get_redirect_location": lambda self: False})())
        expected.append(retry.get_backoff_time())
    assert sleeps == expected == [0.0, 0.2, 0.3, 0.3]  # no wait first, then factor * 2^(n-1), capped


def test_retry_after_is_honoured_but_capped(mock, sleeps):
    policy = HttpPolicy(retries=2, retry_after_max_s=2.0, retry_post=True)
    mock.post("/thing", status=429, headers={"Retry-After": "1"})
    mock.post("/thing", status=503, headers={"Retry-After": "3600"})
    mock.post("/thing", payload={"ok": 1})
    assert call(policy, "POST") == {"ok": 1}
    assert sleeps == [1, 2.0]


def test_no_retry_starts_that_the_deadline_cannot_fit(mock, sleeps):
    policy = HttpPolicy(connect_timeout_s=0.5, read_timeout_s=1.0, retries=5, retry_after_max_s=5.0,
                        deadline_s=3.0, retry_post=True)
    mock.post("/thing", status=503, headers={"Retry-After": "4"})
    with pytest.raises(UpstreamUnavailable) as info:
        call(policy, "POST")
    assert count(mock) == 1  # waiting 4 s plus an attempt would pass the 3 s deadline
    assert sleeps == [] and info.value.retry_after == 4


@pytest.mark.parametrize(
    ("exception", "error", "message"),
    [
        (TransportError("connect", True, "connect timeout"), UpstreamTimeout, "did not answer in time"),
        (TransportError("read", True, "read timeout"), UpstreamTimeout, "did not answer in time"),
        (TransportError("read", False, "connection closed"), UpstreamUnavailable, "is unreachable"),
        (TransportError("connect", False, "refused"), UpstreamUnavailable, "is unreachable"),
    ],
)
def test_transport_failures_are_retried_then_converted(mock, sleeps, exception, error, message):
    events = []
    for _ in range(4):
        mock.post("/thing", exception=exception)
    with pytest.raises(error, match=message):
        call(FAST, "POST", events=events)
    assert count(mock) == 4
    assert len(events) == 3


def test_a_read_timeout_on_a_non_idempotent_post_is_not_retried(mock, sleeps):
    plain = HttpPolicy(retries=3, backoff_factor_s=0.0, backoff_jitter_s=0.0)
    mock.post("/thing", exception=TransportError("read", True, "read timeout"))
    with pytest.raises(UpstreamTimeout):
        call(plain, "POST")
    assert count(mock) == 1


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [(404, "{}", UpstreamNotFound), (400, "{}", UpstreamInvalid), (422, "{}", UpstreamInvalid),
     (200, "not json", UpstreamInvalid)],
)
def test_statuses_and_bodies_map_to_our_errors(mock, sleeps, status, body, error):
    mock.post("/thing", status=status, body=body)
    with pytest.raises(error):
        call(FAST, "POST")
    assert count(mock) == 1


def test_live_refused_connection_is_unreachable_after_connect_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    events = []
    policy = HttpPolicy(retries=2, backoff_factor_s=0.0, backoff_jitter_s=0.0)

    async def main():
        async with AsyncHttpClient("up", f"http://127.0.0.1:{port}", policy, on_retry=events.append) as client:
            await client.post_json("/x", b"{}")

    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        asyncio.run(main())
    assert [e.reason for e in events] == ["unreachable", "unreachable"]  # connect errors: always safe to retry


def test_live_keep_alive_server_reuses_connections(live_partner):
    """Against the real reference server: answers decoded, and far fewer connections than calls."""
    from services.offers.reference import formulas as reference_formulas

    features = {"PCT_BUY_TRANSACTIONS": 0.5, "PCT_GIFT_TRANSACTIONS": 0.3, "PCT_REDEEM_TRANSACTIONS": 0.2,
                "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 1000.0, "AVG_POINTS_BOUGHT": 2000.0}
    body = json.dumps(features).encode()

    async def main():
        async with AsyncHttpClient("partner", live_partner.base_url, HttpPolicy(pool_maxsize=4)) as client:
            return await asyncio.gather(*[client.post_json("/ml/ats/predict", body) for _ in range(200)])

    assert asyncio.run(main()) == [{"prediction": reference_formulas.ats(features)}] * 200
    assert 1 <= len(live_partner.peers) <= 4  # at most pool_maxsize connections carried all 200 calls


@pytest.mark.parametrize("declared", [True, False])
def test_an_answer_over_the_cap_is_a_502_and_the_connection_is_dropped(declared):
    """Against a raw loopback server: one answer of 4 MiB, declared by Content-Length or not
    (close-delimited bodies are a transport matter; here the server declares chunked)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    attempts = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            attempts.append(1)
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                try:
                    if declared:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n" + b" " * 4194304)
                    else:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        for _ in range(64):
                            conn.sendall(b"10000\r\n" + b" " * 65536 + b"\r\n")
                        conn.sendall(b"0\r\n\r\n")
                except OSError:
                    pass  # we hung up at the cap

    threading.Thread(target=serve, daemon=True).start()
    policy = HttpPolicy(retries=1, backoff_factor_s=0.0, backoff_jitter_s=0.0, retry_post=True,
                        max_answer_bytes=1024 * 1024)

    async def main():
        async with AsyncHttpClient("partner", f"http://127.0.0.1:{server.getsockname()[1]}", policy) as client:
            return await client.post_json("/x", b"{}")

    try:
        with pytest.raises(UpstreamInvalid, match="over the 1,048,576-byte cap") as info:
            asyncio.run(main())
    finally:
        server.close()
    assert info.value.status == 502 and len(attempts) == 2  # one bad attempt, retried once
