"""Operational routes: liveness, readiness, the OpenAPI document and its docs page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, send_from_directory
from marshmallow import Schema, fields
from swagger_ui_bundle import swagger_ui_path

from blueprints.auth import requires
from blueprints.declare import operation
from blueprints.errors import envelope
from blueprints.openapi import openapi_document
from capabilities.runtime import runtime
from services.auth.api_keys import Scope

bp = Blueprint("system", __name__)


_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Courier API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", persistAuthorization: true});</script>
</body></html>
"""


class LivenessSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok"]})


class ReadinessSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ready"]})
    checks = fields.List(fields.String(), required=True, metadata={"description": "The checks that passed."})


_liveness = LivenessSchema()
_readiness = ReadinessSchema()


@bp.get("/healthz")
@operation(summary="Liveness (always open, even with no open scopes)", tag="system", response=_liveness)
def healthz():
    """The process is alive and serving; checks nothing else, so it stays cheap. Open to every caller
    (``auth.PUBLIC_ENDPOINTS``): probes carry no key."""
    return {"status": "ok"}


@bp.get("/readyz")
@requires(Scope.OPS_READ)
@operation(summary="Readiness: database migrated, model loaded, partner registry usable", tag="system",
           response=_readiness, errors=(503,))
def readyz() -> Response | dict[str, Any]:
    """Ready to take traffic: every registered readiness check (database, migrations, model...) passes."""
    checks = runtime().readiness_checks
    failures: dict[str, str] = {}
    for name, check in checks.items():
        try:
            reason = check()
        except Exception as exc:  # noqa: BLE001 - any failure of a check means "not ready"
            # The exception text can name hosts, ports and users (a database driver's does): log it,
            # answer only which check failed.
            current_app.logger.error("readiness check failed", extra={"check": name,
                                                                       "error": f"{type(exc).__name__}: {exc}"})
            reason = "unavailable"
        if reason:
            failures[name] = reason
    if failures:
        return envelope(503, "not_ready", "Not ready: " + "; ".join(f"{k}: {v}" for k, v in failures.items()),
                        details=failures, headers={"Retry-After": "5"})
    # Readiness only: the counters (venue cache, upstream failures...) are in /metrics, summed over workers.
    return {"status": "ready", "checks": sorted(checks)}


@bp.get("/metrics")
@requires(Scope.OPS_READ)
@operation(summary="Prometheus metrics (all workers)", tag="system", media_type="text/plain",
           response={"type": "string"}, response_description="Prometheus text format")
def prometheus_metrics():
    """Prometheus text format; under gunicorn, summed over every worker (multiprocess mode)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from services.metrics import metrics

    return Response(metrics().render(), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})


@bp.get("/openapi.json")
@requires(Scope.DOCS_READ)
@operation(summary="This document", tag="system", response={"type": "object"})
def openapi_json():
    return Response(openapi_document(current_app), mimetype="application/json")


@bp.get("/docs")
@requires(Scope.DOCS_READ)
def docs():
    return Response(_DOCS_PAGE, mimetype="text/html")


@bp.get("/docs/static/<path:filename>")
@requires(Scope.DOCS_READ)
def docs_static(filename: str):
    return send_from_directory(swagger_ui_path, filename, max_age=86400)
