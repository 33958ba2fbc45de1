"""A lean HTTP/1.1 keep-alive transport on asyncio, for the batch offers scorer's hot loop.

Why not aiohttp's client here: per call it costs ~0.13 ms of CPU on this machine, three calls per
member, which makes the client, not the partner, the limit of a run (measured: ~0.40 ms of CPU
per member, ~2,600 members/s on one core against a partner that takes ~5,000).  This transport does
only what a JSON POST to a known upstream needs: persistent connections from a bounded pool,
one request per connection at a time, responses parsed by ``httptools`` (llhttp, the C parser
uvicorn uses: Content-Length, chunked and keep-alive rules handled there, not here), a connect
timeout and a read timeout that bounds the whole response (a server trickling bytes cannot hold a
call past it).  TLS works through asyncio's own ``ssl`` support.  Retries, deadlines and error
mapping stay in :class:`services.http.aio.AsyncHttpClient`.

What HTTP/1.1 asks of a client, and where this transport does it (RFC 9112, RFC 9110):
- a body ended by the connection closing (neither Content-Length nor chunked, §6.3 rule 8) is the
  whole answer: :meth:`_Connection.connection_lost`;
- interim 1xx answers (``100 Continue``, ``103 Early Hints``) are read past, the final answer is
  returned (RFC 9110 §15.2): :meth:`_Connection.on_message_complete`;
- a header field sent more than once is one value joined with ", " (RFC 9110 §5.3);
- ``HTTP_PROXY``/``NO_PROXY`` are honoured for ``http://`` origins (absolute-form request target,
  RFC 9112 §3.2.2), as requests and aiohttp (``trust_env``) do.  An ``https://`` origin behind a
  proxy would need a CONNECT tunnel, which this transport does not build: it refuses to start
  (:class:`ProxyNotSupported`) rather than bypass the proxy the operator configured.
``tests/services/http/test_transport_conformance.py`` runs the same raw servers against this
transport and aiohttp and expects the same outcome from both.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import urllib.request
from urllib.parse import unquote, urlsplit

import httptools

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def acknowledge_now(sock: socket.socket) -> None:
    """Send the ACK of what has arrived at once (TCP_QUICKACK; nothing where Linux's option is missing).

    A server that writes its headers and its body separately with Nagle on holds the body until
    our ACK, which Linux delays up to 40 ms while we have nothing to send. Measured: 44 ms per
    cache-off price (sync client) and per partner call (this transport) against such a server;
    2.5 ms and ~1 ms with it. Both HTTP clients call it once the headers are in.
    """
    if _QUICKACK is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:
        pass


class TransportError(Exception):
    """One exchange failed without a response.

    ``stage`` is ``connect`` (nothing was sent: always safe to retry) or ``read`` (the request may
    have reached the server); ``timeout`` says whether a timeout ended it.
    """

    def __init__(self, stage: str, timeout: bool, message: str, oversized: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        self.timeout = timeout
        self.oversized = oversized  # the answer passed the transport's size cap


class ProxyNotSupported(ValueError):
    """An ``https://`` origin is configured to be reached through a proxy (``HTTPS_PROXY``)."""


def proxy_for(url: str) -> str | None:
    """The proxy URL the environment sets for ``url`` (``HTTP_PROXY``/``HTTPS_PROXY``, minus
    ``NO_PROXY``), read the way requests and aiohttp read it (urllib's own functions)."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.netloc.rsplit("@", 1)[-1]):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def check_proxy(url: str) -> str | None:
    """The proxy to reach ``url`` through, or :class:`ProxyNotSupported` for an ``https://`` origin
    behind one (commands call it before any work, so the refusal is a usage error)."""
    proxy = proxy_for(url)
    if proxy and urlsplit(url).scheme == "https":
        raise ProxyNotSupported(
            f"{urlsplit(url).netloc.rsplit('@', 1)[-1]} is to be reached through the proxy {_redacted(proxy)} "
            "(HTTPS_PROXY), and the offers transport does not tunnel TLS through a proxy: add the host to "
            "NO_PROXY if it is reachable directly")
    return proxy


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.port else f"{parts.scheme}://{parts.hostname}"


def _no_body_expected(status: int) -> bool:
    return 100 <= status < 200 or status in (204, 304)


class _Connection(asyncio.Protocol):
    """One socket; at most one request in flight on it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # bytes of body at most; more fails the exchange and drops the connection
        self.size = 0
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.received = False  # any byte of the current response
        self.headers_done = False  # the current (final or interim) answer's header section is in
        self.closed = False
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.sock = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # what was still buffered when an oversized answer dropped the connection
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportError("read", False, f"malformed HTTP response ({exc})"))
            self.close()
            return
        if self.waiter is not None and self.sock is not None:
            # Part of a response (its headers, typically). A response that arrives whole completes
            # above and costs no system call.
            acknowledge_now(self.sock)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None and self.headers_done and self._delimited_by_close():
            # RFC 9112 §6.3: without Content-Length or chunked coding, the close ends the body.
            self.keep_alive = False
            self._complete()
            return
        self._fail(TransportError("read", False, "connection closed before the response ended"))

    def _delimited_by_close(self) -> bool:
        status = self.parser.get_status_code()
        return ("Content-Length" not in self.headers and "chunked" not in self.headers.get("Transfer-Encoding", "")
                and not _no_body_expected(status))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        field, text = name.decode("latin-1").title(), value.decode("latin-1")
        known = self.headers.get(field)
        self.headers[field] = text if known is None else f"{known}, {text}"  # RFC 9110 §5.3

    def on_headers_complete(self) -> None:
        self.headers_done = True
        declared = self.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.limit:
            self._oversized(f"{int(declared):,} bytes")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.limit:
            self._oversized(f"more than {self.limit:,} bytes")
            return
        self.body.append(body)

    def _oversized(self, size: str) -> None:
        self._fail(TransportError("read", False, f"an answer of {size}, over the {self.limit:,}-byte cap",
                                  oversized=True))
        self.body = []
        self.close()

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (RFC 9110 §15.2): the final one follows on the same connection.
            self.headers, self.body, self.size, self.headers_done = {}, [], 0, False
            return
        self.keep_alive = self.parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))

    # ours
    def _fail(self, error: TransportError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def send(self, data: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.headers, self.body, self.received, self.size, self.headers_done = {}, [], False, 0, False
        assert self.transport is not None, "send() before connection_made()"
        self.transport.write(data)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class KeepAliveTransport:
    """Pooled keep-alive connections to one origin (scheme, host, port)."""

    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float, pool_maxsize: int,
                 headers: dict[str, str], max_answer_bytes: int = 4 * 1024 * 1024) -> None:
        parts = urlsplit(base_url)
        origin = parts.netloc.rsplit("@", 1)[-1]  # host[:port], without credentials
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"  # where we connect: the origin, or its proxy
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        self.proxy = check_proxy(base_url)
        proxy_headers = {}
        if self.proxy:
            # Absolute-form request target (RFC 9112 §3.2.2) to the proxy; Host stays the origin's.
            proxy_parts = urlsplit(self.proxy)
            self.host, self.port = proxy_parts.hostname or "127.0.0.1", proxy_parts.port or 80
            self.base_path = f"http://{origin}{self.base_path}"
            if proxy_parts.username is not None:
                token = f"{unquote(proxy_parts.username)}:{unquote(proxy_parts.password or '')}"
                proxy_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_answer_bytes = max_answer_bytes
        fixed = {"Host": origin, **proxy_headers, **headers}
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(pool_maxsize)
        self._ssl = ssl.create_default_context() if self.tls else None
        self.opened = 0  # connections opened so far (tests, benchmarks)

    def _head(self, method: str, path: str, body: bytes | None) -> bytes:
        target = f"{self.base_path}/{path.lstrip('/')}"
        length = b"" if body is None else (b"Content-Type: application/json\r\nContent-Length: "
                                           + str(len(body)).encode() + b"\r\n")
        return f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self._fixed_headers + length + b"\r\n"

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self.max_answer_bytes), self.host, self.port, ssl=self._ssl,
                                       server_hostname=self.host if self.tls else None),
                self.connect_timeout_s)
        except TimeoutError as exc:
            raise TransportError("connect", True, "connect timeout") from exc
        except OSError as exc:
            raise TransportError("connect", False, f"cannot connect ({exc.strerror or exc})") from exc
        self.opened += 1
        return conn

    async def request(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        """One exchange: (status, headers, body), or :class:`TransportError`."""
        data = self._head(method, path, body) + (body or b"")
        async with self._slots:
            while True:
                conn = None
                while self._idle:
                    candidate = self._idle.pop()
                    if not candidate.closed:
                        conn = candidate
                        break
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                waiter = conn.send(data)
                try:
                    result = await asyncio.wait_for(waiter, self.read_timeout_s)
                except TimeoutError as exc:
                    conn.close()
                    raise TransportError("read", True, "read timeout") from exc
                except TransportError as exc:
                    conn.close()
                    # A server may close an idle keep-alive connection just as we reuse it; nothing
                    # of the response arrived, so the request was not processed: send it on a new one.
                    if reused and not conn.received:
                        continue
                    raise exc
                except BaseException:
                    conn.close()  # cancelled mid-response: the connection's state is unknown
                    raise
                if conn.keep_alive and not conn.closed:
                    self._idle.append(conn)
                else:
                    conn.close()
                return result

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


__all__ = ["KeepAliveTransport", "ProxyNotSupported", "TransportError", "acknowledge_now", "check_proxy", "proxy_for"]
