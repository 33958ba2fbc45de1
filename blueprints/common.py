"""Request-parsing helpers shared by blueprints (turn bad input into 400s naming the field)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from services.errors import InvalidRequest

# A date and a time, the whole calendar in a JSON-schema pattern that is published as is: year 0001
# on (Python's first), months 01-12, each month's days, Feb 29 in leap years only (divisible by 4,
# centuries by 400), hours 00-23, an optional fraction and UTC offset.  ECMA-262 and Python read it
# alike (no named groups, no lookarounds), so what a client's validator passes, we parse.
_YEAR = r"(?:[1-9]\d{3}|0[1-9]\d{2}|00[1-9]\d|000[1-9])"
_LEAP_YEAR = r"(?:\d{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
              r"|02-(?:0[1-9]|1\d|2[0-8]))")
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME = r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?"
_OFFSET = r"(?:Z|[+-](?:[01]\d|2[0-3]):?[0-5]\d)"
TIMESTAMP_PATTERN = f"^{_DATE}[ T]{_TIME}{_OFFSET}?$"
_TIMESTAMP_RE = re.compile(TIMESTAMP_PATTERN)


def parsed_timestamp(value: Any, expected: str) -> datetime:
    """``value`` as a datetime if it matches :data:`TIMESTAMP_PATTERN`, else a ``ValidationError``
    saying ``expected``."""
    if not isinstance(value, str) or not _TIMESTAMP_RE.match(value):
        raise ValidationError(expected)
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationError(f"not a valid date and time: {exc}") from exc


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
            # An empty value is a value: "?offer=" is checked like "?offer=x" (and refused, as the
            # document's minLength says), not read as "no filter".
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
