"""HTTP/1.1 conformance: the batch transport and aiohttp against the same raw servers, same outcome.

Each case is a legal (or deliberately broken) way for a server to answer a POST.  Both clients are
held to the outcome HTTP/1.1 prescribes (RFC 9112 framing, RFC 9110 interim answers and field
lines), so the suite also checks itself: a case aiohttp does not pass is a wrong expectation, not a
lenient transport.  Outcomes are ``("ok", status, body, x_trace)`` or ``("error", kind)`` with kind
``timeout``, ``oversized`` or ``failed``.
"""

import asyncio

import aiohttp
import pytest

from services.http.transport import KeepAliveTransport, TransportError
from tests.services.http.raw_server import RawServer

CAP = 64 * 1024  # bytes an answer may have (the policy's max_answer_bytes)
READ_TIMEOUT_S = 1.0
BODY = b'{"prediction": 1.5}'


def head(status=b"200 OK", version=b"HTTP/1.1", fields=b""):
    return version + b" " + status + b"\r\n" + fields + b"\r\n"


def with_length(body=BODY, fields=b""):
    return head(fields=b"Content-Length: " + str(len(body)).encode() + b"\r\n" + fields) + body


def chunked(*parts):
    return head(fields=b"Transfer-Encoding: chunked\r\n") + b"".join(
        b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


OK = ("ok", 200, BODY, None)

# name: (answer for each request -> [(bytes, pause_s)], server closes after answering, calls, outcome)
CASES = {
    "content-length": (lambda n: [(with_length(), 0)], False, 3, OK),
    "chunked": (lambda n: [(chunked(BODY[:7], BODY[7:]), 0)], False, 3, OK),
    "close-delimited (HTTP/1.1, RFC 9112 6.3)": (lambda n: [(head() + BODY, 0)], True, 2, OK),
    "close-delimited (HTTP/1.0)": (lambda n: [(head(version=b"HTTP/1.0") + BODY, 0)], True, 2, OK),
    "100 Continue, then 200": (lambda n: [(head(b"100 Continue"), 0), (with_length(), 0.01)], False, 2, OK),
    "103 Early Hints with fields, then 200": (
        lambda n: [(head(b"103 Early Hints", fields=b"Link: </a.css>\r\n") + with_length(), 0)], False, 2, OK),
    "split writes (a byte, the head, the body)": (
        lambda n: [(with_length()[:1], 0), (with_length()[1:-5], 0.01), (with_length()[-5:], 0.01)], False, 2, OK),
    "a field line sent twice (RFC 9110 5.3)": (
        lambda n: [(with_length(fields=b"X-Trace: a\r\nX-Trace: b\r\n"), 0)], False, 1, ("ok", 200, BODY, "a, b")),
    "keep-alive closed by the server after each answer, GET": (lambda n: [(with_length(), 0)], True, 3, OK),
    "keep-alive closed by the server, POST resent (aiohttp does not)": (lambda n: [(with_length(), 0)], True, 3, OK),
    "503 with Retry-After": (lambda n: [(head(b"503 Busy", fields=b"Retry-After: 1\r\nContent-Length: 0\r\n"), 0)],
                             False, 1, ("ok", 503, b"", None)),
    "oversized, declared": (lambda n: [(head(fields=b"Content-Length: %d\r\n" % (CAP * 16)) + b"x" * 1024, 0)],
                            False, 1, ("error", "oversized")),
    "oversized, chunked": (lambda n: [(chunked(*[b"x" * 8192] * 16), 0)], False, 1, ("error", "oversized")),
    "oversized, close-delimited": (lambda n: [(head() + b"x" * CAP * 2, 0)], True, 1, ("error", "oversized")),
    "trickling past the read timeout": (lambda n: [(head(fields=b"Content-Length: 100\r\n"), 0)] + [(b"x", 0.05)] * 100,
                                        False, 1, ("error", "timeout")),
    "silent past the read timeout": (lambda n: [(b"", 3.0)], False, 1, ("error", "timeout")),
    "garbage instead of a status line": (lambda n: [(b"this is not HTTP\r\n\r\n", 0)], False, 1, ("error", "failed")),
    "closed mid-body": (lambda n: [(head(fields=b"Content-Length: 100\r\n") + b"x" * 10, 0)], True, 1,
                        ("error", "failed")),
    "closed without an answer": (lambda n: [], True, 1, ("error", "failed")),
}


async def _ours(port, calls, method):
    transport = KeepAliveTransport(f"http://127.0.0.1:{port}/api", connect_timeout_s=1.0,
                                   read_timeout_s=READ_TIMEOUT_S, pool_maxsize=4, headers={},
                                   max_answer_bytes=CAP)
    outcomes = []
    try:
        for _ in range(calls):
            try:
                status, headers, body = await transport.request(
                    method, "/ml/ats", b'{"a": 1}' if method == "POST" else None)
                outcomes.append(("ok", status, body, headers.get("X-Trace")))
            except TransportError as exc:
                outcomes.append(("error", "timeout" if exc.timeout else "oversized" if exc.oversized else "failed"))
    finally:
        await transport.close()
    return outcomes


async def _aiohttp(port, calls, method):
    timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT_S, sock_connect=1.0)
    outcomes = []
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=4)) as session:
        for _ in range(calls):
            try:
                async with session.request(method, f"http://127.0.0.1:{port}/api/ml/ats",
                                           data=b'{"a": 1}' if method == "POST" else None) as response:
                    # the same cap, applied the way a careful aiohttp caller applies it
                    if (response.content_length or 0) > CAP:
                        outcomes.append(("error", "oversized"))
                        continue
                    body = b""
                    async for piece in response.content.iter_chunked(65536):
                        body += piece
                        if len(body) > CAP:
                            break
                    if len(body) > CAP:
                        outcomes.append(("error", "oversized"))
                        continue
                    trace = response.headers.getall("X-Trace", None)
                    outcomes.append(("ok", response.status, body, ", ".join(trace) if trace else None))
            except TimeoutError:
                outcomes.append(("error", "timeout"))
            except aiohttp.ClientError:
                outcomes.append(("error", "failed"))
    return outcomes


CLIENTS = {"courier transport": _ours, "aiohttp": _aiohttp}

# Where the two differ on purpose.  A server may close an idle keep-alive connection just as the
# client reuses it.  RFC 9112 9.3.1 lets a client resend a non-idempotent request when it knows the
# request's semantics are idempotent: a partner's prediction is a pure function of its features,
# and nothing of an answer had arrived.  The transport resends on a new connection; aiohttp resends
# only idempotent methods, so its second POST fails.
DIFFERENCES = {("keep-alive closed by the server, POST resent (aiohttp does not)", "aiohttp"):
               [OK, ("error", "failed"), OK]}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", CASES)
def test_both_clients_read_each_answer_as_http_1_1_prescribes(case, client):
    answer, close_after, calls, expected = CASES[case]
    server = RawServer(answer, close_after=close_after)
    try:
        method = "GET" if case.endswith(", GET") else "POST"
        outcomes = asyncio.run(CLIENTS[client](server.port, calls, method))
    finally:
        server.close()
    assert outcomes == DIFFERENCES.get((case, client), [expected] * calls)
