"""Non-blocking twin of :class:`services.http.sync.HttpClient`, for the batch offers scorer only.

Why a second client: a thread pool over ``requests`` costs ~0.75 ms of CPU per call and is bound
by the GIL, so one process tops out near 1,300 calls/s (440 members/s at three calls each).  Here
one event loop drives every call over keep-alive connections (:mod:`services.http.transport`).
The request path of the service (pricing, real-time offers, ``partners check``) keeps ``requests``.

Same contract as ``HttpClient``: it takes an :class:`HttpPolicy` and retries by the same decision
(:mod:`services.http.policy`: urllib3's ``Retry`` counts the attempts and says which may be
retried, ``next_wait`` gives the wait and refuses a retry the deadline cannot fit), and raises the
same :mod:`services.errors` types, so callers handle one set of failures whichever transport
carried the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.retry import Retry

from services.errors import (
    UpstreamError,
    UpstreamInvalid,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from services.http import json_codec
from services.http.policy import HttpPolicy, next_wait, outcome_of, raise_for_upstream_status, retry_of
from services.http.transport import KeepAliveTransport, TransportError
from services.logs import request_id_var
from services.metrics import metrics


@dataclass(frozen=True)
class RetryEvent:
    """One retry about to happen: why (a status or an error kind) and how long we wait first."""

    upstream: str
    reason: str
    wait_s: float


class _Failure(Exception):
    """An attempt that produced no response: ``kind`` decides retrying (connect, read, other)."""

    def __init__(self, kind: str, reason: str, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.kind = kind
        self.reason = reason
        self.error = error

    def as_urllib3(self) -> Exception:
        """The urllib3 error ``Retry.increment`` counts the same way: connect (nothing sent, always
        retryable) or read (retried only for a method it may retry)."""
        if self.kind == "connect":
            return NewConnectionError(None, self.reason)  # type: ignore[arg-type]  # no connection object
        if isinstance(self.error, UpstreamTimeout):
            return ReadTimeoutError(None, None, self.reason)  # type: ignore[arg-type]
        return ProtocolError(self.reason)


class _Answer:
    """What urllib3's ``Retry`` reads of a response: its status and headers."""

    def __init__(self, status: int, headers: Any) -> None:
        self.status, self.headers = status, headers

    def get_redirect_location(self) -> bool:
        return False  # redirects are not followed (redirect=0)


class AsyncHttpClient:
    """One upstream on one event loop: base URL, policy, a pool of keep-alive connections.

    Open it with ``async with`` (or :meth:`open`/:meth:`close`) inside the loop that uses it.
    ``on_retry`` is called for every retry, so a caller can count them instead of logging each.
    """

    def __init__(self, upstream: str, base_url: str, policy: HttpPolicy | None = None,
                 headers: dict[str, str] | None = None,
                 on_retry: Callable[[RetryEvent], None] | None = None) -> None:
        self.upstream = upstream
        self.base_url = base_url.rstrip("/")
        self.policy = policy or HttpPolicy()
        self.headers = {"Accept": "application/json", "User-Agent": "courier/0.1", **(headers or {})}
        self.on_retry = on_retry
        self._transport: KeepAliveTransport | None = None
        self._retry = retry_of(self.policy)

    async def open(self) -> AsyncHttpClient:
        if self._transport is None:
            rid = request_id_var.get()  # a batch run's id ("run-<id>"), sent with every call of the run
            self._transport = KeepAliveTransport(
                self.base_url, connect_timeout_s=self.policy.connect_timeout_s,
                read_timeout_s=self.policy.read_timeout_s, pool_maxsize=self.policy.pool_maxsize,
                max_answer_bytes=self.policy.max_answer_bytes,
                headers={**self.headers, "X-Request-ID": rid} if rid else self.headers)
        return self

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

    async def __aenter__(self) -> AsyncHttpClient:
        return await self.open()

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    # -- one attempt -------------------------------------------------------------------------------
    async def _send(self, method: str, path: str, body: bytes | None) -> tuple[int, Any, bytes]:
        """The transport: one HTTP exchange, or ``TransportError`` (tests replace this)."""
        assert self._transport is not None, "open() the client first"
        return await self._transport.request(method, path, body)

    async def _attempt(self, method: str, path: str, body: bytes | None) -> tuple[int, Any, bytes]:
        try:
            return await self._send(method, path, body)
        except TransportError as exc:
            if exc.oversized:
                raise _Failure("read", "oversized answer", UpstreamInvalid(
                    f"{self.upstream} sent {exc}", upstream=self.upstream,
                    details={"max_answer_bytes": self.policy.max_answer_bytes})) from exc
            if exc.timeout:
                error: UpstreamError = UpstreamTimeout(f"{self.upstream} did not answer in time",
                                                       upstream=self.upstream)
                reason = f"{exc.stage} timeout"
            else:
                error = UpstreamUnavailable(f"{self.upstream} is unreachable", upstream=self.upstream)
                reason = "unreachable" if exc.stage == "connect" else "connection lost"
            # connect: nothing was sent, always retryable; read: retried only if idempotent.
            raise _Failure(exc.stage, reason, error) from exc

    # -- retries -----------------------------------------------------------------------------------
    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any, bytes]:
        """Send one call with retries; return (status, headers, body) of the last response.

        Raises ``UpstreamTimeout`` / ``UpstreamUnavailable`` when no response could be had within
        the policy's retries and deadline. Its attempts are not cut to the deadline (as the sync
        client's are), so a retry must leave room for a whole attempt (connect + read timeouts).
        """
        policy = self.policy
        retry: Retry = self._retry
        deadline = time.monotonic() + policy.deadline_s if policy.deadline_s else None
        attempt_s = policy.connect_timeout_s + policy.read_timeout_s
        url = self.base_url + path
        while True:
            try:
                status, headers, payload = await self._attempt(method, path, body)
            except _Failure as failure:
                error = failure.as_urllib3()
                try:
                    retry = retry.increment(method, url, error=error)
                    wait = next_wait(retry, url=url, error=error, deadline=deadline, attempt_s=attempt_s)
                except (MaxRetryError, type(error)):  # spent, past the deadline, or a read not to repeat
                    raise failure.error from failure.__cause__
                self._notify(failure.reason, wait)
                await asyncio.sleep(wait)
                continue
            answer = _Answer(status, headers)
            if not retry.is_retry(method, status, bool(headers.get("Retry-After"))):
                return status, headers, payload
            try:
                retry = retry.increment(method, url, response=answer)  # type: ignore[arg-type]
                wait = next_wait(retry, url=url, response=answer, deadline=deadline, attempt_s=attempt_s)
            except MaxRetryError:
                return status, headers, payload
            self._notify(f"status {status}", wait)
            await asyncio.sleep(wait)

    def _notify(self, reason: str, wait: float) -> None:
        if self.on_retry is not None:
            self.on_retry(RetryEvent(self.upstream, reason, wait))
        metrics().upstream_retries.labels(self.upstream).inc()

    # -- results -----------------------------------------------------------------------------------
    def json_of(self, payload: bytes) -> Any:
        try:
            return json_codec.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise UpstreamInvalid(f"{self.upstream} sent a body that is not JSON", upstream=self.upstream) from exc

    async def post_json(self, path: str, body: bytes) -> Any:
        """POST an already-encoded JSON body (encode once, send to several endpoints)."""
        return await self._call_json("POST", path, body)

    async def get_json(self, path: str) -> Any:
        return await self._call_json("GET", path, None)

    async def _call_json(self, method: str, path: str, body: bytes | None) -> Any:
        started = time.perf_counter()
        try:
            status, headers, payload = await self.request(method, path, body)
            raise_for_upstream_status(self.upstream, status, headers)
            result = self.json_of(payload)
        except UpstreamError as exc:
            metrics().upstream_call(self.upstream, outcome_of(exc), time.perf_counter() - started)
            raise
        metrics().upstream_call(self.upstream, "ok", time.perf_counter() - started)
        return result


__all__ = ["AsyncHttpClient", "RetryEvent"]
