"""Per-key rate limits on the costly calls, with Flask-Limiter.

Views declare which limit applies with ``@limited("RATE_LIMIT_X")`` (the setting that holds it);
that only marks the function. ``init_app`` then wraps, once at start-up, the marked views with a
Flask-Limiter shared limit named by the setting (so starting, cancelling and resuming runs draw on
one budget), keyed by the API key's id (the client's address when the scope is open). It must run
before ``auth.protect``: authentication wraps outside, so the key is known when the limit is hit
and an unauthenticated flood is refused by auth without touching the counters.

Counters live in Redis when ``COURIER_RATE_LIMIT_STORAGE_URL`` (or the Celery broker) is Redis,
so every worker and machine shares them; in memory otherwise (per process: a limit of N per
minute allows N per worker). If Redis stops answering, Flask-Limiter counts in memory until it
is back rather than failing the request (``in_memory_fallback_enabled``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, current_app, g, request

from blueprints.errors import envelope
from config import ConfigError

log = logging.getLogger("courier.limits")

EXTENSION = "courier.limits"


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


def _too_many(exc: Any) -> Response:
    limiter = current_app.extensions[EXTENSION]
    current = limiter.current_limit
    retry_after = max(1, math.ceil(current.reset_at - time.time())) if current is not None else 60
    limit_text = str(current.limit) if current is not None else str(getattr(exc, "description", ""))
    return envelope(429, "rate_limited", f"Too many requests for this key: {limit_text}. Retry in {retry_after} s.",
                    details={"limit": limit_text, "retry_after_s": retry_after},
                    headers={"Retry-After": str(retry_after)})


def init_app(app: Flask) -> None:
    """Wrap every view marked ``@limited`` whose setting holds a limit; 429 answers in the envelope."""
    from flask_limiter import Limiter, RateLimitExceeded
    from limits import parse_many

    cfg = app.config
    marked: dict[str, Any] = {endpoint: view for endpoint, view in app.view_functions.items()
                              if getattr(view, "rate_limit_setting", None)}
    for setting in {view.rate_limit_setting for view in marked.values()}:
        if cfg[setting]:
            try:
                parse_many(cfg[setting])
            except ValueError as exc:
                raise ConfigError(f"COURIER_{setting}={cfg[setting]!r} is not a rate limit ({exc}): expected e.g. "
                                  "'10/minute' or '10/minute;100/day'") from None
    url = storage_url(cfg)
    limiter = Limiter(key_func=_caller, app=app, storage_uri=url, in_memory_fallback_enabled=True,
                      swallow_errors=True, headers_enabled=False, strategy="moving-window",
                      storage_options={"socket_connect_timeout": 1, "socket_timeout": 1} if url.startswith("redis")
                      else {})
    app.extensions[EXTENSION] = limiter
    _drop_app_wide_hooks(app, limiter)
    for endpoint, view in marked.items():
        setting = view.rate_limit_setting
        if cfg[setting]:
            app.view_functions[endpoint] = limiter.shared_limit(cfg[setting], scope=setting)(view)
    app.register_error_handler(RateLimitExceeded, _too_many)


def _drop_app_wide_hooks(app: Flask, limiter: Any) -> None:
    """Remove the before/after/teardown hooks ``Limiter.init_app`` puts on every request.

    They serve default and blueprint limits, which Courier does not use: its limits are per-view
    decorators whose check runs inside the wrapped view (``_check_request_limit(in_middleware=False)``),
    and the limiter's per-request state lives on the request context, gone with it. Measured in process
    (test client, /healthz, median of 5 x 3,000 requests): 250 us of CPU per request with the hooks,
    150 us without; every estimate and price would have paid the difference.
    """
    def ours(hook: Any) -> bool:
        bound = getattr(hook, "__self__", None)
        partial_args: tuple[Any, ...] = getattr(hook, "args", ())
        return bound is limiter or (len(partial_args) > 0 and partial_args[0] is limiter)

    tables: list[Any] = [app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs]
    for hooks in tables:
        for scope, functions in hooks.items():
            hooks[scope] = [hook for hook in functions if not ours(hook)]
