"""OpenAPI entries of the system routes."""

from __future__ import annotations

from apispec import APISpec
from flask import Flask

from blueprints.openapi import error_responses


def document(spec: APISpec, app: Flask) -> None:
    ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    spec.path(path="/healthz", operations={"get": {"summary": "Liveness", "tags": ["system"], "responses": {"200": ok}}})
    spec.path(
        path="/readyz",
        operations={"get": {"summary": "Readiness: database migrated, model loaded", "tags": ["system"],
                            "responses": {"200": ok, **error_responses(503)}}},
    )
    spec.path(path="/openapi.json", operations={"get": {"summary": "This document", "tags": ["system"],
                                                        "responses": {"200": ok}}})

