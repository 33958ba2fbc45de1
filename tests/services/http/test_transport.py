"""The keep-alive transport against real loopback servers that misbehave in the ways servers do."""

import asyncio
import socket
import time

import pytest

from services.http.transport import KeepAliveTransport, TransportError
from tests.services.http.raw_server import RawServer


def ok(body=b'{"prediction": 1.5}', extra=b""):
    return [(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
             + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body, 0)]


def exchange(server, calls=1, read_timeout=2.0, pool=4):
    async def main():
        transport = KeepAliveTransport(f"http://127.0.0.1:{server.port}/api", connect_timeout_s=1.0,
                                       read_timeout_s=read_timeout, pool_maxsize=pool, headers={"X-Key": "k"})
        try:
            return [await transport.request("POST", "/ml/ats", b'{"a": 1}') for _ in range(calls)], transport.opened
        finally:
            await transport.close()

    return asyncio.run(main())


@pytest.fixture
def serve():
    servers = []

    def start(answer, **kw):
        servers.append(RawServer(answer, **kw))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_sequential_calls_share_one_connection(serve):
    server = serve(lambda n: ok())
    results, opened = exchange(server, calls=20)
    assert [r[0] for r in results] == [200] * 20 and results[0][2] == b'{"prediction": 1.5}'
    assert opened == server.connections == 1


def test_a_server_writing_headers_and_body_apart_costs_no_delayed_ack(serve):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n"
    server = serve(lambda n: [(head, 0), (b'{"ok": 1}', 0)])  # two writes, Nagle on: like http.server
    started = time.monotonic()
    results, _ = exchange(server, calls=100)
    # Waiting for Linux's delayed ACK (40 ms) each time: >= 4 s.  Acknowledging at once: ~1 ms each, so
    # even a loaded machine stays far under the bound.
    assert time.monotonic() - started < 2.0 and {r[2] for r in results} == {b'{"ok": 1}'}


def test_chunked_bodies_are_reassembled(serve):
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = serve(lambda n: [(body + b"5\r\n{\"a\":\r\n", 0), (b"3\r\n 1}\r\n0\r\n\r\n", 0.05)])
    (result,), _ = exchange(server)
    assert result[2] == b'{"a": 1}'


def test_headers_are_read_case_insensitively_as_title_case(serve):
    server = serve(lambda n: [(b"HTTP/1.1 503 Busy\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n", 0)])
    (result,), _ = exchange(server)
    assert result[0] == 503 and result[1]["Retry-After"] == "7"


def test_connection_close_is_honoured_with_a_new_connection_next_time(serve):
    server = serve(lambda n: ok(extra=b"Connection: close\r\n"), close_after=True)
    results, opened = exchange(server, calls=3)
    assert [r[0] for r in results] == [200] * 3 and opened == 3


def test_an_idle_connection_the_server_dropped_is_replaced_transparently(serve):
    # the server answers, then closes without saying so (an idle timeout): the next call must not fail
    server = serve(lambda n: ok(), close_after=True)
    results, opened = exchange(server, calls=3)
    assert [r[0] for r in results] == [200] * 3 and opened == 3 and server.requests == 3


def test_a_trickling_body_is_bounded_by_the_read_timeout(serve):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    server = serve(lambda n: [(head, 0)] + [(b"x", 0.1)] * 100)
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        exchange(server, read_timeout=0.5)
    assert info.value.stage == "read" and info.value.timeout
    assert time.monotonic() - started < 5  # not 10 s of trickle (the read timeout is 0.5 s)


def test_a_malformed_response_is_a_read_error(serve):
    server = serve(lambda n: [(b"this is not HTTP\r\n\r\n", 0)])
    with pytest.raises(TransportError) as info:
        exchange(server)
    assert info.value.stage == "read" and not info.value.timeout


def test_nothing_listening_is_a_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        transport = KeepAliveTransport(f"http://127.0.0.1:{port}", connect_timeout_s=1.0, read_timeout_s=1.0,
                                       pool_maxsize=1, headers={})
        await transport.request("GET", "/", None)

    with pytest.raises(TransportError) as info:
        asyncio.run(main())
    assert info.value.stage == "connect" and not info.value.timeout


def test_the_pool_bounds_connections_under_concurrency(serve):
    server = serve(lambda n: [(b"", 0.01)] + ok())

    async def main():
        transport = KeepAliveTransport(f"http://127.0.0.1:{server.port}", connect_timeout_s=1.0,
                                       read_timeout_s=2.0, pool_maxsize=3, headers={})
        results = await asyncio.gather(*[transport.request("POST", "/x", b"{}") for _ in range(30)])
        await transport.close()
        return results, transport.opened

    results, opened = asyncio.run(main())
    assert [r[0] for r in results] == [200] * 30 and opened == 3


def test_an_http_proxy_from_the_environment_gets_the_absolute_form_and_its_credentials(serve, monkeypatch):
    proxy = serve(lambda n: ok())
    monkeypatch.setenv("HTTP_PROXY", f"http://bob:pa%40ss@127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def main():
        transport = KeepAliveTransport("http://partner.example:8080/api", connect_timeout_s=1.0, read_timeout_s=1.0,
                                       pool_maxsize=1, headers={})
        try:
            return await transport.request("POST", "/ml/ats", b"{}")
        finally:
            await transport.close()

    assert asyncio.run(main())[0] == 200
    request_line, *fields = proxy.heads[0].split(b"\r\n")
    assert request_line == b"POST http://partner.example:8080/api/ml/ats HTTP/1.1"
    assert b"Host: partner.example:8080" in fields
    assert b"Proxy-Authorization: Basic Ym9iOnBhQHNz" in fields  # bob:pa@ss


def test_no_proxy_sends_the_origin_form_straight_to_the_origin(serve, monkeypatch):
    origin = serve(lambda n: ok())
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    (result,), _ = exchange(origin)
    assert result[0] == 200 and origin.heads[0].startswith(b"POST /api/ml/ats HTTP/1.1")


def test_an_https_origin_behind_a_proxy_is_refused_not_bypassed(monkeypatch):
    from services.http.transport import ProxyNotSupported

    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(ProxyNotSupported) as info:
        KeepAliveTransport("https://partner.example/api", connect_timeout_s=1.0, read_timeout_s=1.0,
                           pool_maxsize=1, headers={})
    assert "proxy.internal:3128" in str(info.value) and "NO_PROXY" in str(info.value)
    assert "secret" not in str(info.value)
