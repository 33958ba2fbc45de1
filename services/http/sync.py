"""The request path's HTTP client: the venue API, real-time partner calls, ``partners check``.

Every such upstream is an :class:`HttpClient`: one pooled
``requests.Session`` per process with urllib3 ``Retry``, explicit (connect, read) timeouts
on every call, a total time budget per call, and ``requests`` exceptions converted into
:mod:`services.errors` types at this boundary, so callers never see ``requests``.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

from services.errors import (
    UpstreamError,
    UpstreamInvalid,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from services.http import json_codec
from services.http.policy import (
    HttpPolicy,
    next_wait,
    outcome_of,
    raise_for_upstream_status,
    retry_of,
)
from services.http.transport import acknowledge_now
from services.logs import request_id_var
from services.metrics import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

# Absolute monotonic deadline of the call running in this thread.  urllib3 runs Retry.increment
# in the calling thread, so a context variable is how a per-call budget reaches a Retry object
# that is shared by every call on the session.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("courier_http_deadline", default=None)
# Attempts of the call in progress on this thread ([n]: urllib3's retries and ours add to it), so a
# failure can say how many were made.
_ATTEMPTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("courier_http_attempts", default=None)


def _count_retry(upstream: str) -> None:
    attempts = _ATTEMPTS.get()
    if attempts is not None:
        attempts[0] += 1
    metrics().upstream_retries.labels(upstream).inc()


class DeadlineTimeout(Timeout):
    """Per-attempt timeouts that never reach past the call's deadline.

    urllib3 clones the timeout it was given at the start of every attempt (retries included), so
    cloning is where each attempt's connect and read timeouts are cut to the time left.  A hung
    first attempt therefore leaves room for more attempts instead of ending the call: measured
    with 20% of venue API calls hanging, the fixed "only retry if a whole attempt fits" rule
    failed 31% of cold price requests.
    """

    def __init__(self, connect: float, read: float, deadline: float) -> None:
        super().__init__(connect=connect, read=read)
        self.deadline = deadline

    def clone(self) -> Timeout:
        left = max(0.001, self.deadline - time.monotonic())
        return Timeout(connect=min(self._connect, left), read=min(self._read, left))  # type: ignore[type-var]


class DeadlineRetry(Retry):
    """``Retry`` that starts no attempt without at least ``min_attempt_s`` left before the deadline.

    Past the deadline ``MaxRetryError`` is raised with the last cause; for a retryable status
    urllib3 then hands back the last response (``raise_on_status=False``), which the client
    maps to 503 with the upstream's ``Retry-After``.  Each attempt's timeouts are cut to the
    time left by :class:`DeadlineTimeout`.
    """

    def __init__(self, *args: Any, min_attempt_s: float = 0.0, upstream: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_attempt_s = min_attempt_s
        self.upstream = upstream

    def new(self, **kw: Any) -> DeadlineRetry:
        kw.setdefault("min_attempt_s", self.min_attempt_s)
        kw.setdefault("upstream", self.upstream)
        return super().new(**kw)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        new_retry = super().increment(method, url, response, error, _pool, _stacktrace)
        deadline = _DEADLINE.get()
        if deadline is not None:
            # Retry only if the wait plus a useful attempt still fits; the attempt's own timeouts are
            # then cut to the time left, so the call never outlives its deadline.
            next_wait(new_retry, url=url, response=response, error=error, deadline=deadline,
                      attempt_s=self.min_attempt_s)
        _count_retry(self.upstream)
        return new_retry


def build_session(policy: HttpPolicy, headers: dict[str, str] | None = None, upstream: str = "") -> requests.Session:
    """A pooled session whose adapter retries per ``policy`` (see :class:`HttpPolicy`)."""
    retry = retry_of(policy, DeadlineRetry, min_attempt_s=policy.min_attempt_s, upstream=upstream)
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=policy.pool_maxsize, max_retries=retry, pool_block=False)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"Accept": "application/json", "User-Agent": "courier/0.1"})
    # Upstreams are configured explicitly; consulting proxy variables and ~/.netrc on every call
    # costs ~25% of a call's CPU (measured: 1.01 -> 0.75 ms per POST) and can leak credentials.
    session.trust_env = False
    if headers:
        session.headers.update(headers)
    return session


def _has_cause(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, kinds):
            return True
        todo.extend([getattr(cur, "reason", None), cur.__cause__, cur.__context__])
        todo.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
    return False


class HttpClient:
    """One upstream service: base URL, policy, and its session (one per process).

    The session is built lazily and rebuilt when the process id changes, so an instance
    created in gunicorn's master before ``fork`` never shares sockets between workers.
    """

    def __init__(
        self,
        upstream: str,
        base_url: str,
        policy: HttpPolicy | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.upstream = upstream
        self.base_url = base_url.rstrip("/")
        self.policy = policy or HttpPolicy()
        self.headers = dict(headers or {})
        self._session: requests.Session | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        if self._session is None or self._pid != os.getpid():
            with self._lock:
                if self._session is None or self._pid != os.getpid():
                    self._session = build_session(self.policy, self.headers, self.upstream)
                    self._pid = os.getpid()
        return self._session

    def close(self) -> None:
        if self._session is not None and self._pid == os.getpid():
            self._session.close()
        self._session = None

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def deadline(self) -> float | None:
        """Absolute monotonic deadline of a call starting now (None: no budget)."""
        return time.monotonic() + self.policy.deadline_s if self.policy.deadline_s else None

    def request(self, method: str, path: str, *, json: Any = None, params: Any = None,
                deadline: float | None = None) -> requests.Response:
        """Send one call (with retries) and return the response, whatever its status.

        Raises :class:`UpstreamTimeout` or :class:`UpstreamUnavailable` when no response
        could be had within the policy's retries and deadline (``deadline``, absolute
        monotonic, overrides the policy's budget).  With a deadline the whole response, body
        included, is bounded by it.
        """
        try:
            return self._attempt(method, path, json=json, params=params,
                                 deadline=deadline if deadline is not None else self.deadline())
        except _BadBody as exc:
            raise exc.error from exc.__cause__

    def _attempt(self, method: str, path: str, *, json: Any, params: Any, deadline: float | None) -> requests.Response:
        url = self.url(path)
        rid = request_id_var.get()
        # The request (or run) id travels with every outbound call, so the upstream's logs join ours.
        headers = {"X-Request-ID": rid} if rid else None
        token = _DEADLINE.set(deadline)
        try:
            timeout: Any = self.policy.timeout
            if deadline is not None:
                timeout = DeadlineTimeout(self.policy.connect_timeout_s, self.policy.read_timeout_s, deadline)
            # requests hands a urllib3 Timeout to urllib3 unchanged; its type hints only know numbers.
            # Streamed, so that the body is read (and bounded) by _read_body.
            response = self.session.request(method, url, json=json, params=params, stream=True, timeout=timeout,
                                            headers=headers)
        except requests.exceptions.RequestException as exc:
            raise self._convert(exc, url) from exc
        finally:
            _DEADLINE.reset(token)
        self._read_body(response, deadline)
        return response

    def _read_body(self, response: requests.Response, deadline: float | None) -> None:
        """Read the body one socket read at a time, each read cut to the time the answer has left.

        An answer has ``read_timeout_s`` from its headers to its last byte (and never past the
        call's deadline): a socket timeout bounds each read, not the body, so an upstream trickling
        a byte every few ms never tripped it and one attempt took the whole deadline (measured: 12%
        of cold prices failed at 20% trickling answers, 0% at 20% hung ones). Now a trickle is one
        bad attempt, retried within the deadline like a hang. An answer over ``max_answer_bytes``
        (by its Content-Length, or as it arrives) is a bad attempt too, read no further.
        """
        cap = self.policy.max_answer_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            response.close()
            raise _BadBody(self._oversized(f"{int(declared):,} bytes"))
        answer_deadline = time.monotonic() + self.policy.read_timeout_s
        if deadline is not None:
            answer_deadline = min(answer_deadline, deadline)
        raw = response.raw
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            acknowledge_now(sock)  # the headers are in: a server holding the body for our ACK gets it now
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                left = answer_deadline - time.monotonic()
                if left <= 0:
                    raise _BadBody(UpstreamTimeout(f"{self.upstream} did not finish its answer in time",
                                                   upstream=self.upstream))
                if sock is not None:
                    sock.settimeout(min(self.policy.read_timeout_s, left))
                chunk = raw.read1(64 * 1024, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    raise _BadBody(self._oversized(f"more than {cap:,} bytes"))
                chunks.append(chunk)
        except _BadBody:
            response.close()
            raise
        except (HTTPError, OSError) as exc:
            response.close()
            error: UpstreamError
            if _has_cause(exc, (ReadTimeoutError, TimeoutError)):
                error = UpstreamTimeout(f"{self.upstream} did not finish its answer in time", upstream=self.upstream)
            else:
                error = UpstreamUnavailable(f"{self.upstream} broke off its answer", upstream=self.upstream)
            raise _BadBody(error) from exc
        response._content = b"".join(chunks)  # what ``response.content`` would have read
        response._content_consumed = True  # read to its end: urllib3 has returned the connection to the pool

    def _oversized(self, size: str) -> UpstreamInvalid:
        return UpstreamInvalid(f"{self.upstream} sent an answer of {size}, over the "
                               f"{self.policy.max_answer_bytes:,}-byte cap", upstream=self.upstream,
                               details={"max_answer_bytes": self.policy.max_answer_bytes})

    def _convert(self, exc: requests.exceptions.RequestException, url: str) -> UpstreamError:
        if isinstance(exc, requests.exceptions.RetryError):
            return UpstreamUnavailable(f"{self.upstream} kept failing after retries", upstream=self.upstream)
        # NewConnectionError (refused, DNS failure) subclasses ConnectTimeoutError in urllib3: test it first.
        if _has_cause(exc, (NewConnectionError,)) and not isinstance(exc, requests.exceptions.Timeout):
            return UpstreamUnavailable(f"{self.upstream} is unreachable", upstream=self.upstream)
        if isinstance(exc, (requests.exceptions.Timeout,)) or _has_cause(exc, (ReadTimeoutError, ConnectTimeoutError)):
            return UpstreamTimeout(f"{self.upstream} did not answer in time", upstream=self.upstream)
        if isinstance(exc, requests.exceptions.ConnectionError):
            return UpstreamUnavailable(f"{self.upstream} is unreachable", upstream=self.upstream)
        return UpstreamInvalid(f"{self.upstream} call failed: {type(exc).__name__}", upstream=self.upstream)

    def check(self, response: requests.Response) -> requests.Response:
        """Map a non-2xx response to our error types (after retries were spent)."""
        raise_for_upstream_status(self.upstream, response.status_code, response.headers)
        return response

    def call_json(self, method: str, path: str, *, json: Any = None, params: Any = None,
                  parse: Callable[[Any], T] | None = None) -> T | Any:
        """One JSON call; ``parse`` turns the document into what the caller needs, raising ``ValueError``
        with a message that completes "<upstream> sent ..." when it cannot.

        A body that breaks off, times out between reads, is not JSON or fails ``parse`` is one
        bad attempt, not a bad call: it is retried within the same deadline, up to the policy's
        ``retries`` more times (GET, or POST when the policy says it is idempotent). That count is
        its own: urllib3 counts statuses and connection errors inside each attempt.  Measured with 20% of
        venue API bodies cut short, not retrying them failed 36% of cold price requests.
        """
        started = time.perf_counter()
        attempts = [1]
        token = _ATTEMPTS.set(attempts)
        try:
            result = self._call_json(method, path, json=json, params=params, parse=parse)
        except UpstreamError as exc:
            exc.attempts = attempts[0]  # for the caller's one line ("failed after 3 attempts")
            metrics().upstream_call(self.upstream, outcome_of(exc), time.perf_counter() - started)
            raise
        finally:
            _ATTEMPTS.reset(token)
        metrics().upstream_call(self.upstream, "ok", time.perf_counter() - started)
        return result

    def _call_json(self, method: str, path: str, *, json: Any, params: Any, parse: Callable[[Any], T] | None) -> Any:
        deadline = self.deadline()
        retryable = method != "POST" or self.policy.retry_post
        attempts_left = self.policy.retries if retryable else 0
        while True:
            try:
                response = self.check(self._attempt(method, path, json=json, params=params, deadline=deadline))
                try:
                    doc = _document(response)
                except ValueError as exc:
                    raise _BadBody(UpstreamInvalid(f"{self.upstream} sent a body that is not JSON",
                                                   upstream=self.upstream)) from exc
                if parse is None:
                    return doc
                try:
                    return parse(doc)
                except ValueError as exc:
                    raise _BadBody(UpstreamInvalid(f"{self.upstream} sent {exc}", upstream=self.upstream)) from exc
            except _BadBody as exc:
                time_left = deadline is None or time.monotonic() + self.policy.backoff_factor_s \
                    + self.policy.min_attempt_s < deadline
                if attempts_left <= 0 or not time_left:
                    raise exc.error from exc.__cause__
                attempts_left -= 1
                _count_retry(self.upstream)
                time.sleep(self.policy.backoff_factor_s)

    def get_json(self, path: str, *, params: Any = None, parse: Callable[[Any], T] | None = None) -> T | Any:
        return self.call_json("GET", path, params=params, parse=parse)

    def post_json(self, path: str, payload: Any) -> Any:
        return self.call_json("POST", path, json=payload)


def _document(response: requests.Response) -> Any:
    """The body's JSON value: orjson on UTF-8 (what requests assumes of ``application/json``), else
    requests' own decoding of a declared charset. ``Response.json`` took ~100 us of a cold price's
    two venue documents (Helsinki, 18 KB); orjson ~40 us (timeit, in process).
    """
    encoding = response.encoding
    if encoding is None or encoding.lower() in _UTF8:
        return json_codec.loads(response.content)
    return response.json()


_UTF8 = frozenset({"utf-8", "utf8"})


class _BadBody(Exception):
    """One attempt's answer was unusable (broken, late or malformed body); ``error`` is what to raise."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error

