"""Request-parsing helpers shared by blueprints (turn bad input into 400s naming the field)."""

from __future__ import annotations

from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from services.errors import InvalidRequest


def json_body() -> Any:
    """The request's JSON body, or a 400 ``invalid_request`` saying what is wrong with it."""
    if not request.is_json:
        raise InvalidRequest(
            "Request body must be JSON.",
            details={"Content-Type": [f"expected application/json, got {request.mimetype or 'nothing'}"]},
        )
    body = request.get_json(silent=True)
    if body is None:
        raise InvalidRequest("Request body is not valid JSON.", details={"body": ["not valid JSON"]})
    return body


def _quick(schema: Schema, data: Any) -> Any:
    """A schema's fast path for well-formed input (``quick_load``), if it has one; else None."""
    quick = getattr(schema, "quick_load", None)
    return quick(data) if quick is not None else None


def load_or_400(schema: Schema, data: Any, message: str = "Invalid request.") -> Any:
    loaded = _quick(schema, data)
    if loaded is not None:
        return loaded
    try:
        return schema.load(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"body": exc.messages}
        raise InvalidRequest(message, details=messages) from exc


def load_query(schema: Schema, message: str = "Invalid query parameters.") -> Any:
    """Validate the query string with ``schema``; a parameter given twice is an error, not a silent pick.

    Every problem is reported at once, one entry per field.
    """
    details: dict[str, list[str]] = {}
    flat: dict[str, Any] = {}
    for key, values in request.args.lists():
        if len(values) > 1:
            details[key] = [f"given {len(values)} times; give it once"]
        elif key in schema.fields:
            if values[0] == "" and not schema.fields[key].required:
                continue  # "?offer=" means no filter, as clients building query strings send it
            flat[key] = values[0]
    if not details:
        loaded = _quick(schema, flat)
        if loaded is not None:
            return loaded
    try:
        data = schema.load(flat)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        for key, problems in messages.items():
            if key not in details:  # "given twice" says it better than "missing"
                details[key] = problems if isinstance(problems, list) else [str(problems)]
        data = None
    if details:
        raise InvalidRequest(message, details=details)
    return data
