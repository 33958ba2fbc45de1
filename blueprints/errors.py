"""The one error envelope: ``{"error": ..., "code": ..., "details": {...}}`` for every failure."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from services.errors import CourierError

log = logging.getLogger("courier.errors")

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    501: "not_implemented",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}

# Headers of werkzeug's own error responses worth keeping (Allow on 405, Retry-After on 503...).
_KEPT_HEADERS = {"allow", "retry-after", "www-authenticate"}


def envelope(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body: dict[str, Any] = {"error": message, "code": code, "details": details or {}}
    if extra:
        body.update(extra)
    response = jsonify(body)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def courier_error_response(exc: CourierError, extra: dict[str, Any] | None = None) -> Response:
    if exc.status >= 500:
        log.warning("upstream or server error", extra={"code": exc.code, "status": exc.status, "details": exc.details})
    return envelope(exc.status, exc.code, exc.message, exc.details, exc.headers, extra)


def http_error_response(exc: HTTPException, extra: dict[str, Any] | None = None) -> Response:
    status = exc.code or 500
    headers = {k: v for k, v in exc.get_headers() if k.lower() in _KEPT_HEADERS}
    return envelope(status, HTTP_CODES.get(status, "http_error"), exc.description or exc.name, None, headers, extra)


def internal_error_response(exc: Exception, extra: dict[str, Any] | None = None) -> Response:
    log.error("unhandled exception", exc_info=exc)
    return envelope(500, "internal_error", "Internal server error.", None, None, extra)


def database_error_response(exc: Exception, extra: dict[str, Any] | None = None) -> Response:
    """The database cannot be reached (down, restarting, locked past the busy timeout): 503, retry soon.

    The driver's message names hosts, ports and sometimes users: it goes to the log, never the body.
    """
    log.error("database unavailable", extra={"error": f"{type(exc).__name__}: {exc}"})
    return envelope(503, "database_unavailable", "The database is unavailable; retry shortly.", None,
                    {"Retry-After": "5"}, extra)


def register_error_handlers(app: Flask) -> None:
    from sqlalchemy.exc import InterfaceError, OperationalError

    app.register_error_handler(OperationalError, database_error_response)
    app.register_error_handler(InterfaceError, database_error_response)
    app.register_error_handler(CourierError, courier_error_response)
    app.register_error_handler(HTTPException, http_error_response)
    app.register_error_handler(Exception, internal_error_response)
