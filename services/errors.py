"""Courier's own error types.

Services raise these; the app's error handlers turn each into the JSON envelope
``{"error": ..., "code": ..., "details": {...}}`` with ``status``.  Keeping the status on
the exception means a new error needs no handler change, and services stay free of Flask.
"""

from __future__ import annotations

from typing import Any


class CourierError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}


class InvalidRequest(CourierError):
    """The client sent something we cannot use; ``details`` maps each bad field to its problems."""

    status = 400
    code = "invalid_request"


class NotFound(CourierError):
    status = 404
    code = "not_found"


class Unprocessable(CourierError):
    status = 422
    code = "unprocessable"


class UpstreamError(CourierError):
    """Base for every failure of a service we call; ``upstream`` names which one."""

    status = 502
    code = "upstream_error"

    def __init__(self, message: str, *, upstream: str, **kwargs: Any) -> None:
        details = {"upstream": upstream, **(kwargs.pop("details", None) or {})}
        super().__init__(message, details=details, **kwargs)
        self.upstream = upstream
        self.attempts: int | None = None  # attempts made, when the client counted them


class UpstreamInvalid(UpstreamError):
    """The upstream answered, but with something we cannot use (bad JSON, bad data)."""

    status = 502
    code = "upstream_invalid"


class UpstreamUnavailable(UpstreamError):
    """Unreachable, refusing, or still failing (5xx/429) after our retries."""

    status = 503
    code = "upstream_unavailable"

    def __init__(self, message: str, *, upstream: str, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(message, upstream=upstream, headers={"Retry-After": str(retry_after)}, **kwargs)
        self.retry_after = retry_after


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamNotFound(UpstreamError):
    """The upstream says the thing we asked for does not exist (its 404)."""

    status = 404
    code = "upstream_not_found"


class Unauthenticated(CourierError):
    """No API key, or one that is malformed, unknown or revoked (401 with ``WWW-Authenticate``)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message, details={"required_scope": scope},
                         headers={"WWW-Authenticate": f'Bearer realm="courier", scope="{scope}"'})


class Forbidden(CourierError):
    """A valid API key without the scope the endpoint needs."""

    status = 403
    code = "insufficient_scope"

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message, details={"required_scope": scope},
                         headers={"WWW-Authenticate": f'Bearer realm="courier", error="insufficient_scope", '
                                                      f'scope="{scope}"'})
