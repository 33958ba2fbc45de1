"""Per-request plumbing: request id, access log line, database session lifecycle."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, current_app, g, request
from sqlalchemy.orm import Session

from services.logs import request_id_var

access_log = logging.getLogger("courier.access")

# An incoming id is echoed into logs and headers: accept only a bounded, printable token.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def db_session() -> Session:
    """The request's database session, opened on first use and closed on teardown."""
    session = g.get("_db_session")
    if session is None:
        session = current_app.extensions["courier"].session()
        g._db_session = session
    return session


def register_request_hooks(app: Flask) -> None:
    log_access = bool(app.config["ACCESS_LOG"])

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID")
        rid = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.request_id = rid
        g.started = time.perf_counter()
        request_id_var.set(rid)

    @app.after_request
    def _finish(response):
        rid = g.get("request_id")
        if rid is not None:
            response.headers["X-Request-ID"] = rid
            if log_access:
                access_log.info(
                    "request",
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "status": response.status_code,
                        "duration_ms": round((time.perf_counter() - g.started) * 1000, 3),
                        "request_id": rid,
                    },
                )
        return response

    @app.teardown_appcontext
    def _close_session(_exc) -> None:
        session = g.pop("_db_session", None)
        if session is not None:
            session.close()
