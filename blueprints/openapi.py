"""The OpenAPI 3 document, generated from the marshmallow schemas at app creation.

Each blueprint module that serves API routes exposes ``document(spec, app)``; this module
builds the shared parts (error envelope, info) and serialises the result once, so serving
``/openapi.json`` costs nothing per request.
"""

from __future__ import annotations

import importlib
import json
import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema, fields

# Blueprint modules whose ``document(spec, app)`` adds their paths.
DOCUMENTED_MODULES = ("blueprints.system", "blueprints.estimate", "blueprints.pricing",
                      "blueprints.partner_reference", "blueprints.offers")


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "Human-readable message."})
    code = fields.String(required=True, metadata={"description": "Machine-readable code, e.g. invalid_request."})
    details = fields.Dict(required=True, metadata={"description": "Per-field problems or context."})


def error_responses(*statuses: int, schema: str | dict = "Error", examples: dict[int, dict] | None = None) -> dict:
    """Response objects for ``statuses``, all using the shared error envelope (or ``schema``)."""
    reasons = {
        400: "Invalid request (details name each bad field)",
        401: "No API key, or an invalid or revoked one (see WWW-Authenticate)",
        403: "The API key lacks the scope this operation needs",
        404: "Not found",
        413: "Body too large",
        415: "Unsupported media type",
        422: "Unprocessable entity",
        502: "Upstream answered with something unusable",
        503: "Upstream unavailable (see Retry-After)",
        504: "Upstream timed out",
    }
    examples = examples or {}
    return {
        str(s): {"description": reasons.get(s, "Error"), "content": {"application/json": {
            "schema": schema, **({"example": examples[s]} if s in examples else {})}}}
        for s in statuses
    }


# Path parameters mean the same wherever they appear: described once.
PATH_PARAMETERS = {
    "run_id": "The run's id, as `flask run-offers` prints it and `GET /api/v1/offer-runs` lists it.",
    "member_id": "A member id of that run (as in the input file).",
}


def annotate_operations(document: dict, app: Flask) -> None:
    """Every operation gets an ``operationId`` from its view's endpoint (declared once, by the view;
    a second path of one view gets the path as a suffix) and described path parameters."""
    seen: set[str] = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: len(r.rule), reverse=True):
        operations = document.get("paths", {}).get(_openapi_path(rule.rule), {})
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = operations.get(method.lower())
            if operation is None:
                continue
            if "operationId" not in operation:
                operation_id = rule.endpoint.replace(".", "_")
                if operation_id in seen:
                    operation_id += "_" + (re.sub(r"\W+", "_", rule.rule).strip("_") or "root")
                operation["operationId"] = operation_id
            seen.add(operation["operationId"])
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter["name"] in PATH_PARAMETERS:
                    parameter.setdefault("description", PATH_PARAMETERS[parameter["name"]])


def build_spec(app: Flask) -> APISpec:
    spec = APISpec(
        title="Courier",
        version="0.1.0",
        openapi_version="3.0.3",
        info={"description": "Delivery-time estimates, delivery order prices and loyalty offers."},
        plugins=[MarshmallowPlugin()],
    )
    spec.components.schema("Error", schema=ErrorSchema)
    for module_name in DOCUMENTED_MODULES:
        importlib.import_module(module_name).document(spec, app)
    return spec


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def add_security(document: dict, app: Flask) -> None:
    """Declare the API-key schemes, and on each operation whether it needs a key (and which scope)."""
    from blueprints.auth import scope_of

    document.setdefault("components", {})["securitySchemes"] = {
        "bearerKey": {"type": "http", "scheme": "bearer",
                      "description": "An API key from `flask api-keys create`: `Authorization: Bearer <key>`."},
        "headerKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                      "description": "The same key in the X-API-Key header."},
    }
    open_scopes = app.config["OPEN_SCOPES"]
    for rule in app.url_map.iter_rules():
        scope = scope_of(app.view_functions[rule.endpoint])
        operations = document.get("paths", {}).get(_openapi_path(rule.rule), {})
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            operation = operations.get(method.lower())
            if operation is None or scope is None:
                continue
            if scope in open_scopes:
                operation["security"] = []
                continue
            # Scopes in a security requirement are only for OAuth2 in OpenAPI 3.0: name it here instead.
            operation["security"] = [{"bearerKey": []}, {"headerKey": []}]
            operation["x-required-scope"] = scope.value
            operation["description"] = (operation.get("description", "") +
                                        f"\n\nNeeds an API key with scope `{scope.value}`.").strip()
            operation["responses"].update(error_responses(401, 403, schema={"$ref": "#/components/schemas/Error"}))


def register_openapi(app: Flask) -> None:
    document = build_spec(app).to_dict()
    add_security(document, app)
    annotate_operations(document, app)
    app.extensions["courier_openapi"] = json.dumps(document).encode()

