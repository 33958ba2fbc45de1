"""The OpenAPI 3 document, generated from the marshmallow schemas at app creation.

Each blueprint module that serves API routes exposes ``document(spec, app)``; this module
builds the shared parts (error envelope, info) and serialises the result once, so serving
``/openapi.json`` costs nothing per request.
"""

from __future__ import annotations

import importlib
import json

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


def error_responses(*statuses: int, schema: str = "Error") -> dict:
    """Response objects for ``statuses``, all using the shared error envelope (or ``schema``)."""
    reasons = {
        400: "Invalid request (details name each bad field)",
        404: "Not found",
        413: "Body too large",
        415: "Unsupported media type",
        422: "Unprocessable entity",
        502: "Upstream answered with something unusable",
        503: "Upstream unavailable (see Retry-After)",
        504: "Upstream timed out",
    }
    return {
        str(s): {"description": reasons.get(s, "Error"), "content": {"application/json": {"schema": schema}}}
        for s in statuses
    }


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


def register_openapi(app: Flask) -> None:
    app.extensions["courier_openapi"] = json.dumps(build_spec(app).to_dict()).encode()

