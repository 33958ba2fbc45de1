"""Per-key rate limits on the costly calls, counted by the ``limits`` library.

Views declare which limit applies with ``@limited("RATE_LIMIT_X")`` (the setting that holds it);
that only marks the function. ``init_app`` then wraps, once at start-up, the marked views so that
each call is counted against the limit named by the setting (starting, cancelling and resuming runs
draw on one budget), keyed by the API key's id (the client's address when the scope is open). It
must run before ``auth.protect``: authentication wraps outside, so the key is known when the limit
is hit and an unauthenticated flood is refused by auth without touching the counters.

Counters live in Redis when ``COURIER_RATE_LIMIT_STORAGE_URL`` (or a configured Celery broker) is
Redis, so every worker and machine shares them; in memory otherwise (per process: a limit of N per
minute allows N per worker). If Redis stops answering, counting goes on in memory (logged once) and
Redis is tried again after 1 s, doubling to at most 60 s while it stays down: a request is never
failed, nor slowed by more than one 1 s connect timeout per retry, because the counter store is down.

Why ``limits`` (the engine Flask-Limiter is built on, same maintainers) and not Flask-Limiter
itself: the windows, storages and their atomic Redis scripts are the library's either way, and
Courier used none of Flask-Limiter's own parts (its request hooks cost /healthz 250 vs 150 us of CPU
in process, so they were already kept off on a private app). But Flask-Limiter installs a ``flask
limiter`` plugin command, and Flask imports every plugin before it runs any command: +80 ms and
+4.7 MB on every ``flask`` command here (``flask --app wsgi --help``, 5 interleaved runs: 0.81 vs
0.73 s median), against issue 22's start-up target. ``limits`` itself is imported by the first
limited request, not at start-up.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import TooManyRequests

from blueprints.errors import envelope
from config import ConfigError

log = logging.getLogger("courier.limits")

EXTENSION = "courier.limits"

# The notation the settings take (the ``limits`` library's): "10/minute", "10/5 minutes", several
# separated by ";" or ",". Checked at start-up without importing the library.
_ONE_LIMIT = re.compile(r"^\s*[1-9][0-9]*\s*/\s*([1-9][0-9]*\s*)?(second|minute|hour|day|month|year)s?\s*$")
_FIRST_RETRY_S, _LONGEST_RETRY_S = 1.0, 60.0  # Redis down: how soon to try it again (doubling)


class RateLimited(TooManyRequests):
    """A key went over a limit: which one, in words, and the whole seconds until it lets one through."""

    def __init__(self, limit: str, retry_after_s: int) -> None:
        super().__init__(f"Too many requests for this key: {limit}. Retry in {retry_after_s} s.")
        self.limit = limit
        self.retry_after_s = retry_after_s


def limited(setting: str) -> Callable:
    def mark(view: Callable) -> Callable:
        view.rate_limit_setting = setting  # type: ignore[attr-defined]
        return view
    return mark


def _caller() -> str:
    key_id = g.get("api_key_id")
    return f"key:{key_id}" if key_id else f"address:{request.remote_addr}"


def storage_url(config: Mapping[str, Any]) -> str:
    """The settings' storage, else the broker when one was configured (not the built-in default) and it
    is Redis (and its client is installed), else memory."""
    from config import DEFAULTS

    if config["RATE_LIMIT_STORAGE_URL"]:
        return config["RATE_LIMIT_STORAGE_URL"]
    broker = config["CELERY_BROKER_URL"] or ""
    if broker != DEFAULTS["CELERY_BROKER_URL"] and broker.startswith(("redis://", "rediss://")):
        try:
            import redis  # noqa: F401 - the `distributed` extra brings it
        except ImportError:
            return "memory://"
        return broker
    return "memory://"


class Limits:
    """The app's counters: one moving-window limiter on the configured storage, built on first use,
    with an in-memory stand-in while that storage is unreachable."""

    def __init__(self, storage: str) -> None:
        self.storage = storage
        self._lock = threading.Lock()  # held while building the limiters and switching between them
        self._primary: Any = None
        self._fallback: Any = None
        self._storage_errors: tuple[type[BaseException], ...] = ()
        self._retry_primary_at = 0.0  # monotonic; 0: the primary storage is in use
        self._retry_delay_s = _FIRST_RETRY_S

    def _build(self) -> None:
        from limits.storage import MemoryStorage, storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        # 1 s: a Redis that does not answer costs a request at most one connect, then memory is used.
        options: dict[str, float] = ({"socket_connect_timeout": 1, "socket_timeout": 1}
                                     if self.storage.startswith("redis") else {})
        primary = storage_from_string(self.storage, **options)
        self._storage_errors = tuple(primary.base_exceptions) if isinstance(primary.base_exceptions, tuple) \
            else (primary.base_exceptions,)
        self._fallback = MovingWindowRateLimiter(MemoryStorage())
        self._primary = MovingWindowRateLimiter(primary)

    def _limiter(self) -> tuple[Any, bool]:
        """The limiter to count with now, and whether it is the primary one."""
        with self._lock:
            if self._primary is None:
                self._build()
            if self._retry_primary_at and time.monotonic() < self._retry_primary_at:
                return self._fallback, False
            return self._primary, True

    def _primary_failed(self, exc: BaseException) -> None:
        with self._lock:
            if not self._retry_primary_at:
                log.warning("rate limit storage unreachable, counting in memory until it answers",
                            extra={"storage": self.storage.split("@")[-1], "error": f"{type(exc).__name__}: {exc}"})
            else:
                self._retry_delay_s = min(self._retry_delay_s * 2, _LONGEST_RETRY_S)
            self._retry_primary_at = time.monotonic() + self._retry_delay_s

    def _primary_answered(self) -> None:
        if self._retry_primary_at:
            with self._lock:
                if self._retry_primary_at:
                    log.info("rate limit storage answers again", extra={"storage": self.storage.split("@")[-1]})
                self._retry_primary_at, self._retry_delay_s = 0.0, _FIRST_RETRY_S

    def hit(self, items: list[Any], scope: str, caller: str) -> None:
        """Count one call of ``caller`` against each of ``items`` in order; ``RateLimited`` at the
        first one it goes over (the moving window counts and checks in one atomic step per item)."""
        limiter, primary = self._limiter()
        try:
            for item in items:
                if not limiter.hit(item, scope, caller):
                    stats = limiter.get_window_stats(item, scope, caller)
                    raise RateLimited(str(item), max(1, math.ceil(stats.reset_time - time.time())))
        except self._storage_errors as exc:
            if not primary:
                raise
            self._primary_failed(exc)
            self.hit(items, scope, caller)
            return
        if primary:
            self._primary_answered()

    def wrap(self, view: Callable, setting: str, limit: str) -> Callable:
        parsed: list[Any] = []

        @functools.wraps(view)
        def limited_view(*args: Any, **kwargs: Any) -> Any:
            if not parsed:
                from limits import parse_many

                parsed[:] = parse_many(limit)
            self.hit(parsed, setting, _caller())
            return view(*args, **kwargs)

        return limited_view


def _too_many(exc: TooManyRequests) -> Response:
    breach = exc if isinstance(exc, RateLimited) else RateLimited("the limit", 60)  # a 429 not of ours
    return envelope(429, "rate_limited", breach.description,
                    details={"limit": breach.limit, "retry_after_s": breach.retry_after_s},
                    headers={"Retry-After": str(breach.retry_after_s)})


def init_app(app: Flask) -> None:
    """Check the limits' notation and wrap every view marked ``@limited`` whose setting holds one;
    429 answers in the envelope."""
    cfg = app.config
    marked: dict[str, Any] = {endpoint: view for endpoint, view in app.view_functions.items()
                              if getattr(view, "rate_limit_setting", None)}
    for setting in {view.rate_limit_setting for view in marked.values()}:
        text = cfg[setting] or ""
        bad = [part for part in re.split(r"[;,]", text) if part.strip() and not _ONE_LIMIT.match(part)]
        if bad:
            raise ConfigError(f"COURIER_{setting}={text!r} is not a rate limit ({bad[0].strip()!r}): expected e.g. "
                              "'10/minute' or '10/minute;100/day' (second, minute, hour, day, month, year)")
    limits = app.extensions[EXTENSION] = Limits(storage_url(cfg))
    for endpoint, view in marked.items():
        setting = view.rate_limit_setting
        if cfg[setting]:
            app.view_functions[endpoint] = limits.wrap(view, setting, cfg[setting])
    app.register_error_handler(TooManyRequests, _too_many)
