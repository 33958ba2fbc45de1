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
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.util.retry import Retry

from services.errors import (
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

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

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)


class DeadlineRetry(Retry):
    """``Retry`` that never starts an attempt it cannot finish within the call's deadline.

    Past the deadline ``MaxRetryError`` is raised with the last cause; for a retryable status
    urllib3 then hands back the last response (``raise_on_status=False``), which the client
    maps to 503 with the upstream's ``Retry-After``.
    """

    def __init__(self, *args: Any, attempt_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attempt_s = attempt_s  # longest one attempt can take: connect + read timeouts

    def new(self, **kw: Any) -> DeadlineRetry:
        kw.setdefault("attempt_s", self.attempt_s)
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
        # Only retry if the wait plus a whole attempt (connect + read timeouts) still fits, so the
        # call never outlives its deadline, even when a fast 429 is followed by a hanging attempt.
        needed = wait + self.attempt_s
        if time.monotonic() + needed > deadline:
            reason = error or ResponseError(f"deadline reached after status {getattr(response, 'status', '?')}")
            raise MaxRetryError(_pool, url, reason) from reason
        return new_retry


def build_session(policy: HttpPolicy, headers: dict[str, str] | None = None) -> requests.Session:
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
        attempt_s=policy.connect_timeout_s + policy.read_timeout_s,
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
                    self._session = build_session(self.policy, self.headers)
                    self._pid = os.getpid()
        return self._session

    def close(self) -> None:
        if self._session is not None and self._pid == os.getpid():
            self._session.close()
        self._session = None

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, json: Any = None, params: Any = None) -> requests.Response:
        """Send one call (with retries) and return the response, whatever its status.

        Raises :class:`UpstreamTimeout` or :class:`UpstreamUnavailable` when no response
        could be had within the policy's retries and deadline.
        """
        url = self.url(path)
        deadline = time.monotonic() + self.policy.deadline_s if self.policy.deadline_s else None
        token = _DEADLINE.set(deadline)
        try:
            return self.session.request(method, url, json=json, params=params, timeout=self.policy.timeout)
        except requests.exceptions.RequestException as exc:
            raise self._convert(exc, url) from exc
        finally:
            _DEADLINE.reset(token)

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

    def get_json(self, path: str, *, params: Any = None) -> Any:
        return self.json_of(self.check(self.request("GET", path, params=params)))

    def post_json(self, path: str, payload: Any) -> Any:
        return self.json_of(self.check(self.request("POST", path, json=payload)))
