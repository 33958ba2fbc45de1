"""The one policy every outbound HTTP call follows, and the one retry decision both clients make.

An :class:`HttpPolicy` says how hard and how long to try one upstream. Both clients (``sync`` on
``requests``, ``aio`` on the keep-alive ``transport``) count attempts with the same urllib3
``Retry`` built by :func:`retry_of` (``Retry.increment``: total, connect, read and status budgets;
which methods may be retried) and take the wait and the deadline check from :func:`next_wait`, so a
change in urllib3's rules moves both at once. Statuses are mapped to our errors here too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from services.errors import UpstreamError, UpstreamInvalid, UpstreamNotFound, UpstreamTimeout, UpstreamUnavailable

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

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
    # The largest answer worth reading: more is one bad attempt (502 ``upstream_invalid`` if none
    # succeeds) and the connection is dropped. Without a cap a 1 GiB venue answer grew two gunicorn
    # workers by ~0.8-1.1 GB each, and they kept it. Venue documents are 4-12 KB; a partner's batch
    # answer of 1,000 items ~40 KB.
    max_answer_bytes: int = 4 * 1024 * 1024

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)


def retry_of(policy: HttpPolicy, retry_class: type[Retry] = Retry, **extra: Any) -> Retry:
    """The urllib3 ``Retry`` of ``policy``: what both clients count their attempts with."""
    methods = set(Retry.DEFAULT_ALLOWED_METHODS)
    if policy.retry_post:
        methods.add("POST")
    return retry_class(
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
        retry_after_max=policy.retry_after_max_s,  # type: ignore[arg-type]  # a float cap works
        respect_retry_after_header=True,
        raise_on_status=False,
        **extra,
    )


def next_wait(retry: Retry, *, url: str | None, response: Any = None, error: Exception | None = None,
              deadline: float | None, attempt_s: float) -> float:
    """How long to wait before the retry that ``retry`` (already incremented) allows: the upstream's
    ``Retry-After`` (capped) for a status, else urllib3's jittered exponential backoff. Raises
    ``MaxRetryError`` when the wait plus an attempt of ``attempt_s`` would pass ``deadline``: no
    retry starts that cannot finish in time."""
    wait = None
    if response is not None and retry.respect_retry_after_header:
        wait = retry.get_retry_after(response)
    if wait is None:
        wait = retry.get_backoff_time()
    if deadline is not None and time.monotonic() + wait + attempt_s > deadline:
        reason = error or ResponseError(f"deadline reached after status {getattr(response, 'status', '?')}")
        raise MaxRetryError(None, url, reason) from reason  # type: ignore[arg-type]  # no pool: a client of ours
    return wait


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
