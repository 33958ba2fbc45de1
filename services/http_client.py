"""The one way Courier talks HTTP to anything outside itself.

Every upstream (venue API, partner endpoints) is an :class:`HttpClient`: one pooled
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
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

from services.errors import (
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from services.http_transport import acknowledge_now
from services.logs import request_id_var
from services.metrics import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# Absolute monotonic deadline of the call running in this thread.  urllib3 runs Retry.increment
# in the calling thread, so a context variable is how a per-call budget reaches a Retry object
# that is shared by every call on the session.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("courier_http_deadline", default=None)


@dataclass(frozen=True)
class HttpPolicy:
    """How hard and how long to try one upstream.

    Defaults suit an interactive request path: a few fast retries, short backoff with jitter
    (so that a fleet of workers does not retry in lock-step), and a cap on ``Retry-After`` so a
    server asking for minutes cannot stall a request that a client is waiting on.
    """

    connect_timeout_s: float = 1.0
    read_timeout_s: float = 5.0
    retries: int = 3
    connect_retries: int | None = None  # None: same as retries
    backoff_factor_s: float = 0.05
    backoff_jitter_s: float = 0.05
    backoff_max_s: float = 1.0
    retry_after_max_s: float = 1.0
    deadline_s: float | None = None
    retry_post: bool = False
    pool_maxsize: int = 16
    # The shortest attempt worth starting near the deadline: a loopback answer takes ~1 ms and the
    # venue API ~50-150 ms, so 0.1 s left is a real chance; less is a call that can only time out.
    min_attempt_s: float = 0.1

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)


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
        if deadline is None:
            return new_retry
        wait = None
        if response is not None and self.respect_retry_after_header:
            wait = new_retry.get_retry_after(response)
        if wait is None:
            wait = new_retry.get_backoff_time()
        # Retry only if the wait plus a useful attempt still fits; the attempt's own timeouts are
        # then cut to the time left, so the call never outlives its deadline.
        if time.monotonic() + wait + self.min_attempt_s > deadline:
            reason = error or ResponseError(f"deadline reached after status {getattr(response, 'status', '?')}")
            raise MaxRetryError(_pool, url, reason) from reason
        metrics().upstream_calls.labels(self.upstream, "retried").inc()
        return new_retry


def build_session(policy: HttpPolicy, headers: dict[str, str] | None = None, upstream: str = "") -> requests.Session:
    """A pooled session whose adapter retries per ``policy`` (see :class:`HttpPolicy`)."""
    methods = set(Retry.DEFAULT_ALLOWED_METHODS)
    if policy.retry_post:
        methods.add("POST")
    retry = DeadlineRetry(
        total=policy.retries,
        connect=policy.retries if policy.connect_retries is None else min(policy.connect_retries, policy.retries),
        read=policy.retries,
        status=policy.retries,
        other=0,
        redirect=0,
        allowed_methods=frozenset(methods),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=policy.backoff_factor_s,
        backoff_jitter=policy.backoff_jitter_s,
        backoff_max=policy.backoff_max_s,
        retry_after_max=policy.retry_after_max_s,
        respect_retry_after_header=True,
        raise_on_status=False,
        min_attempt_s=policy.min_attempt_s,
        upstream=upstream,
    )
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


def _retry_after_of(headers: Any, default: int = 1) -> int:
    value = headers.get("Retry-After", "")
    try:
        return max(1, int(float(value)))
    except ValueError:
        return default


def raise_for_upstream_status(upstream: str, status: int, headers: Any) -> None:
    """Map a non-2xx status (after retries were spent) to our error types; shared by both clients."""
    if status < 400:
        return
    if status == 404:
        raise UpstreamNotFound(f"{upstream} has no such resource", upstream=upstream)
    if status in RETRY_STATUSES:
        raise UpstreamUnavailable(
            f"{upstream} answered {status} after retries",
            upstream=upstream,
            retry_after=_retry_after_of(headers),
            details={"upstream_status": status},
        )
    raise UpstreamInvalid(
        f"{upstream} rejected the request with status {status}",
        upstream=upstream,
        details={"upstream_status": status},
    )


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
            if deadline is None:
                return self.session.request(method, url, json=json, params=params, timeout=self.policy.timeout,
                                            headers=headers)
            timeout = DeadlineTimeout(self.policy.connect_timeout_s, self.policy.read_timeout_s, deadline)
            # requests hands a urllib3 Timeout to urllib3 unchanged; its type hints only know numbers.
            response = self.session.request(method, url, json=json, params=params, stream=True,
                                            timeout=timeout,  # type: ignore[arg-type]
                                            headers=headers)
        except requests.exceptions.RequestException as exc:
            raise self._convert(exc, url) from exc
        finally:
            _DEADLINE.reset(token)
        self._read_body(response, deadline)
        return response

    def _read_body(self, response: requests.Response, deadline: float) -> None:
        """Read the body one socket read at a time, each read cut to the time left.

        A socket timeout bounds each read, not the body: an upstream trickling a byte every
        0.5 s kept a sync worker busy until gunicorn killed it at 30 s.
        """
        raw = response.raw
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            acknowledge_now(sock)  # the headers are in: a server holding the body for our ACK gets it now
        chunks: list[bytes] = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _BadBody(UpstreamTimeout(f"{self.upstream} did not finish its answer in time",
                                                   upstream=self.upstream))
                if sock is not None:
                    sock.settimeout(min(self.policy.read_timeout_s, left))
                chunk = raw.read1(64 * 1024, decode_content=True)
                if not chunk:
                    break
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

    def json_of(self, response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamInvalid(f"{self.upstream} sent a body that is not JSON", upstream=self.upstream) from exc

    def call_json(self, method: str, path: str, *, json: Any = None, params: Any = None,
                  parse: Callable[[Any], T] | None = None) -> T | Any:
        """One JSON call; ``parse`` turns the document into what the caller needs, raising ``ValueError``
        with a message that completes "<upstream> sent ..." when it cannot.

        A body that breaks off, times out between reads, is not JSON or fails ``parse`` is one
        bad attempt, not a bad call: it is retried within the same deadline and retry budget as
        statuses (GET, or POST when the policy says it is idempotent).  Measured with 20% of
        venue API bodies cut short, not retrying them failed 36% of cold price requests.
        """
        started = time.perf_counter()
        try:
            result = self._call_json(method, path, json=json, params=params, parse=parse)
        except UpstreamError as exc:
            metrics().upstream_call(self.upstream, outcome_of(exc), time.perf_counter() - started)
            raise
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
                    doc = response.json()
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
                log.info("retrying a bad answer", extra={"upstream": self.upstream, "problem": exc.error.message})
                time.sleep(self.policy.backoff_factor_s)

    def get_json(self, path: str, *, params: Any = None, parse: Callable[[Any], T] | None = None) -> T | Any:
        return self.call_json("GET", path, params=params, parse=parse)

    def post_json(self, path: str, payload: Any) -> Any:
        return self.call_json("POST", path, json=payload)


def outcome_of(exc: UpstreamError) -> str:
    """The metrics label of a failed call: timeout, unreachable, 4xx, 5xx or invalid (unusable answer)."""
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    status = exc.details.get("upstream_status") if isinstance(exc, (UpstreamUnavailable, UpstreamInvalid)) else None
    if isinstance(exc, UpstreamNotFound) or (status is not None and status < 500 and status != 429):
        return "4xx"
    if status is not None:
        return "5xx"  # 5xx, and 429 after retries: the upstream could not serve us
    return "unreachable" if isinstance(exc, UpstreamUnavailable) else "invalid"


class _BadBody(Exception):
    """One attempt's answer was unusable (broken, late or malformed body); ``error`` is what to raise."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.error = error

