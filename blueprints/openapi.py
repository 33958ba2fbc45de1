"""The OpenAPI 3 document, generated from what each view declares.

Every API view carries an ``@operation(...)`` declaration (``blueprints/declare.py``): the schemas
it loads and dumps with, a summary, its error statuses. This module walks the app's URL map, so a
route and its document cannot drift apart, turns each declaration into an operation with apispec's
marshmallow plugin, and serialises the result once, on first use: serving ``/openapi.json`` costs
nothing per request after that. Routes without a declaration (the Swagger page and its files) are
not part of the API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema, fields

from blueprints.auth import scope_of
from blueprints.declare import Operation, declared
from services.auth.api_keys import Scope


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "Human-readable message."})
    code = fields.String(required=True, metadata={"description": "Machine-readable code, e.g. invalid_request."})
    details = fields.Dict(required=True, metadata={"description": "Per-field problems or context."})


def error_responses(*statuses: int, schema: str | dict = "Error", examples: dict[int, dict] | None = None,
                    refusals: Mapping[int, Mapping[str, Any]] | None = None) -> dict:
    """Response objects for ``statuses``, all using the shared error envelope (or ``schema``).

    ``refusals`` (status -> code -> example) are the codes a well-formed request can still get at
    that status; they are listed as ``x-refusals`` and shown as named examples.
    """
    reasons = {
        400: "Invalid request (details name each bad field)",
        401: "No API key, or an invalid or revoked one (see WWW-Authenticate)",
        403: "The API key lacks the scope this operation needs",
        404: "Not found",
        409: "Conflict: the resource's state does not allow it (see the code)",
        413: "Body too large",
        415: "Unsupported media type",
        422: "Unprocessable entity",
        429: "Too many requests for this key (see Retry-After)",
        502: "Upstream answered with something unusable",
        503: "Upstream or a service it needs unavailable (Retry-After when known)",
        504: "Upstream timed out",
    }
    examples, refusals = examples or {}, refusals or {}
    responses: dict[str, Any] = {}
    for status in statuses:
        media: dict[str, Any] = {"schema": schema}
        response: dict[str, Any] = {"description": reasons.get(status, "Error"), "content": {"application/json": media}}
        if status in refusals:
            codes = sorted(refusals[status])
            invalid = {"invalid": {"value": examples[status]}} if status in examples else {}
            media["examples"] = {**invalid, **{code: {"value": refusals[status][code]} for code in refusals[status]}}
            response["x-refusals"] = codes
            response["description"] += "; or a well-formed request refused: " + ", ".join(f"`{c}`" for c in codes)
        elif status in examples:
            media["example"] = examples[status]
        responses[str(status)] = response
    return responses


# The document's sections, in the order the docs page shows them; a view's tag must be one of these.
TAGS = {
    "estimate": "Predicted delivery time from the tree-ensemble model and the venue's preparation time.",
    "pricing": "Delivery order price (DOPC) from the venue API's data, cached in memory and the database.",
    "offers": "Loyalty offers: one member in real time, and the recorded batch runs (`flask run-offers`).",
    "system": "Probes, metrics and this document.",
    "reference partner": "The reference partner's ML endpoints, served by Courier for development and benchmarks.",
}

# Path parameters mean the same wherever they appear: described once (a new one must be added here).
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "run_id": {"description": "The run's id, as `flask run-offers` prints it and `GET /api/v1/offer-runs` lists it.",
               "example": 1},
    "member_id": {"description": "A member id of that run (as in the input file).", "example": "F44DBBBC"},
}


def build_spec(app: Flask) -> APISpec:
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Courier",
        version="0.1.0",
        openapi_version="3.0.3",
        info={"description": "Delivery-time estimates, delivery order prices and loyalty offers."},
        plugins=[plugin],
    )
    assert plugin.converter is not None  # set by APISpec
    plugin.converter.add_attribute_function(_field_constraints)
    plugin.converter.add_parameter_attribute_function(_example_on_parameter)
    spec.components.schema("Error", schema=ErrorSchema)
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    for name, description in TAGS.items():
        spec.tag({"name": name, "description": description})
    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    with app.app_context():  # a field's bounds may be settings (pricing's cart value cap)
        for rule in app.url_map.iter_rules():  # registration order: a capability's main route first
            view = app.view_functions[rule.endpoint]
            contract = declared(view)
            if contract is None:
                continue
            if contract.tag not in TAGS:
                raise ValueError(f"{rule.endpoint}: tag {contract.tag!r} is not one of {list(TAGS)} (openapi.TAGS)")
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                operation = _operation(contract, rule.rule)
                # The view's endpoint names the operation; one view on two routes would need two names.
                operation["operationId"] = rule.endpoint.replace(".", "_")
                if operation["operationId"] in operation_ids:
                    raise ValueError(f"{rule.endpoint} serves more than one operation: give each route its own view")
                operation_ids.add(operation["operationId"])
                _add_security(operation, scope_of(view), app.config["OPEN_SCOPES"])
                paths.setdefault(rule.rule, {})[method.lower()] = operation
        for rule_text, operations in paths.items():
            spec.path(path=_openapi_path(rule_text), operations=operations)
    return spec


def _operation(contract: Operation, rule: str) -> dict[str, Any]:
    """The OpenAPI operation of one declaration; apispec resolves the schemas in it."""
    error_schema: Any = contract.error_schema or "Error"
    operation: dict[str, Any] = {
        "summary": contract.summary,
        "tags": [contract.tag],
        "parameters": _path_parameters(rule) + ([{"in": "query", "schema": contract.query}] if contract.query else [])
        + list(contract.headers),
        "responses": {str(contract.status): {"description": contract.response_description},
                      **error_responses(*contract.errors, schema=error_schema, examples=dict(contract.error_examples),
                                       refusals=contract.refusals)},
    }
    if contract.description:
        operation["description"] = contract.description
    success = operation["responses"][str(contract.status)]
    if contract.response is not None:
        success["content"] = {contract.media_type: {"schema": contract.response}}
        if contract.response_example is not None:
            success["content"][contract.media_type]["example"] = contract.response_example
    if contract.response_headers:
        success["headers"] = dict(contract.response_headers)
    for status, description in contract.other_answers.items():
        operation["responses"][str(status)] = {"description": description, **(
            {"content": success["content"]} if "content" in success else {})}
    if contract.request_media is not None:
        operation["requestBody"] = {"required": True, "content": dict(contract.request_media)}
        operation["responses"].setdefault("413", error_responses(413, schema=error_schema)["413"])
    if contract.body is not None:
        media: dict[str, Any] = {"schema": contract.body}
        if contract.body_example is not None:
            media["example"] = contract.body_example
        operation["requestBody"] = {"required": True, "content": {"application/json": media}}
        # Any body over COURIER_MAX_CONTENT_LENGTH is refused before the view runs (Flask's 413).
        operation["responses"].setdefault("413", error_responses(413, schema=error_schema)["413"])
    if not operation["parameters"]:
        del operation["parameters"]
    return operation


_PATH_ARGUMENT = re.compile(r"<(?:([^:<>]+):)?([^<>]+)>")
_CONVERTER_TYPES = {"int": "integer", "float": "number"}


def _path_parameters(rule: str) -> list[dict[str, Any]]:
    """Path parameters from the rule itself: ``<int:run_id>`` is an integer, anything else a string."""
    return [{"name": name, "in": "path", "required": True,
             "schema": {"type": _CONVERTER_TYPES.get(converter or "", "string")},
             **PATH_PARAMETERS[name]}
            for converter, name in _PATH_ARGUMENT.findall(rule)]


def _field_constraints(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """A custom field's JSON-schema constraints (type, bounds, pattern), from its ``json_schema()``:
    the field states what it accepts next to the code that checks it."""
    describe = getattr(field, "json_schema", None)
    return describe() if callable(describe) else {}


def _example_on_parameter(self: Any, field: fields.Field, ret: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Swagger UI's "Try it out" fills a parameter from the parameter's own ``example``."""
    example = ret.get("schema", {}).pop("example", None)
    return {"example": example} if example is not None else {}


def _openapi_path(rule: str) -> str:
    return _PATH_ARGUMENT.sub(r"{\2}", rule)


SECURITY_SCHEMES = {
    "bearerKey": {"type": "http", "scheme": "bearer",
                  "description": "An API key from `flask api-keys create`: `Authorization: Bearer <key>`."},
    "headerKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                  "description": "The same key in the X-API-Key header."},
}


def _add_security(operation: dict[str, Any], scope: Scope | None, open_scopes: Collection[Scope]) -> None:
    """Whether the operation needs an API key, and which scope (no scope: a public endpoint)."""
    if scope is None or scope in open_scopes:
        operation["security"] = []
        return
    # Scopes in a security requirement are only for OAuth2 in OpenAPI 3.0: name it here instead.
    operation["security"] = [{"bearerKey": []}, {"headerKey": []}]
    operation["x-required-scope"] = scope.value
    operation["description"] = (operation.get("description", "") +
                                f"\n\nNeeds an API key with scope `{scope.value}`.").strip()
    operation["responses"].update(error_responses(401, 403))


def openapi_document(app: Flask) -> bytes:
    """The serialised document, built on first use and kept: a worker pays its ~15 ms once, on the
    first ``/openapi.json``, rather than every app built (each test builds one, ~500 a suite)."""
    document = app.extensions.get("courier_openapi")
    if document is None:  # two first requests at once build it twice, both the same: no lock needed
        document = app.extensions["courier_openapi"] = json.dumps(build_spec(app).to_dict()).encode()
    return document
