"""Per-key rate limits on the costly calls, with Flask-Limiter.

Views declare which limit applies with ``@limited("RATE_LIMIT_X")`` (the setting that holds it);
that only marks the function. ``init_app`` then wraps, once at start-up, the marked views so that
each is checked against a Flask-Limiter shared limit named by the setting (starting, cancelling and
resuming runs draw on one budget), keyed by the API key's id (the client's address when the scope
is open). It must run before ``auth.protect``: authentication wraps outside, so the key is known
when the limit is hit and an unauthenticated flood is refused by auth without touching the counters.

Counters live in Redis when ``COURIER_RATE_LIMIT_STORAGE_URL`` (or a configured Celery broker) is
Redis, so every worker and machine shares them; in memory otherwise (per process: a limit of N per
minute allows N per worker). If Redis stops answering, Flask-Limiter counts in memory until it is
back rather than failing the request (``in_memory_fallback_enabled``).

Two costs kept off everything else, both measured here:
- Flask-Limiter is imported and built on the first limited request, not at start-up: importing it
  after Flask costs ~32 ms, which every ``flask`` command and gunicorn start would pay.
- It is initialised on a private Flask app, never served, so the before/after/teardown hooks
  ``Limiter.init_app`` installs for default and blueprint limits (which Courier does not use) run on
  no request of ours: in process, /healthz cost 250 us of CPU per request with them and 150 without.
  Its checks need none of them: a limited view's wrapper checks the limit itself, and reads the app
  and request through Flask's context globals.
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

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import TooManyRequests

from blueprints.errors import envelope
from config import ConfigError

log = logging.getLogger("courier.limits")

EXTENSION = "courier.limits"

# The notation the settings take (Flask-Limiter's, the common part): "10/minute", "10/5 minutes",
# several separated by ";". Checked at start-up without importing the library.
_ONE_LIMIT = re.compile(r"^\s*[1-9][0-9]*\s*/\s*([1-9][0-9]*\s*)?(second|minute|hour|day|month|year)s?\s*$")


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
    """The app's Flask-Limiter, built on first use (see the module docstring)."""

    def __init__(self, storage: str) -> None:
        self.storage = storage
        self._limiter: Any = None
        self._lock = threading.RLock()  # held while building the limiter and each view's limit

    @property
    def limiter(self) -> Any:
        if self._limiter is None:
            with self._lock:
                if self._limiter is None:
                    from flask_limiter import Limiter

                    options: dict[str, str | int] = ({"socket_connect_timeout": 1, "socket_timeout": 1}
                                                     if self.storage.startswith("redis") else {})
                    limiter = Limiter(key_func=_caller, storage_uri=self.storage, in_memory_fallback_enabled=True,
                                      swallow_errors=True, headers_enabled=False, strategy="moving-window",
                                      storage_options=options)
                    limiter.init_app(Flask("courier-limits"))  # its hooks land on this app, never served
                    self._limiter = limiter
        return self._limiter

    def wrap(self, view: Callable, setting: str, limit: str) -> Callable:
        checked: list[Callable] = []

        @functools.wraps(view)
        def limited_view(*args: Any, **kwargs: Any) -> Any:
            if not checked:
                with self._lock:
                    if not checked:
                        checked.append(self.limiter.shared_limit(limit, scope=setting)(view))
            return checked[0](*args, **kwargs)

        return limited_view


def breached() -> tuple[str, int]:
    """The limit the current request went over, in words, and the seconds until it lets one through."""
    limits: Limits = current_app.extensions[EXTENSION]
    current = limits.limiter.current_limit
    retry_after = max(1, math.ceil(current.reset_at - time.time())) if current is not None else 60
    return (str(current.limit) if current is not None else "the limit"), retry_after


def _too_many(exc: TooManyRequests) -> Response:
    limit_text, retry_after = breached()
    return envelope(429, "rate_limited", f"Too many requests for this key: {limit_text}. Retry in {retry_after} s.",
                    details={"limit": limit_text, "retry_after_s": retry_after},
                    headers={"Retry-After": str(retry_after)})


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
