"""What a view declares about its contract, once: the declaration runs it and documents it.

A view names the schema its input is loaded with and the schema its answer is dumped with in one
``@operation(...)`` declaration, and the declaration does both (as microblog-api's ``@body`` and
``@response``): the query string (``query=``) or JSON body (``body=``, a marshmallow schema) is
loaded through the fast loaders of ``blueprints.common`` (a schema's ``quick_load`` first, then
marshmallow, a 400 naming each field) and handed to the view as ``query`` or ``body``; what the view
returns is dumped with ``response=`` and sent as JSON, unless it is already a ``Response`` (a
stream, a page, an error envelope). ``blueprints/openapi.py`` turns the same declarations into the
OpenAPI document, so what is documented is what runs. Bodies declared as JSON schemas (the reference
partner's, checked with per-item messages by its formulas) are documented only.

Why not flask-smorest: its ``@arguments``/``@response`` decorators parse with webargs and dump on
every call around the view, which would put marshmallow's generic loading back on the pricing and
estimate paths that ``quick_load`` keeps it off (~20 us of a ~120 us warm price), and its
Blueprint brings its own error payloads beside our envelope. What we need from it, schema to
OpenAPI conversion, is apispec, which it uses too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from flask import Response, jsonify
from marshmallow import Schema

from blueprints.common import json_body, load_or_400, load_query

View = TypeVar("View", bound=Callable[..., Any])

# A JSON schema written as a dict: for bodies a view does not load with marshmallow (the reference
# partner's, checked by reference_formulas with per-item messages) and for non-JSON answers.
JsonSchema = dict[str, Any]


@dataclass(frozen=True)
class Operation:
    """One endpoint's contract. ``query``/``body`` load the input, ``response`` dumps the answer."""

    summary: str
    tag: str
    description: str = ""
    query: Schema | None = None
    body: Schema | JsonSchema | None = None
    body_example: Any = None
    response: Schema | JsonSchema | None = None
    response_description: str = "OK"
    media_type: str = "application/json"  # of the 200 answer
    errors: tuple[int, ...] = ()
    error_schema: type[Schema] | None = None  # None: the shared envelope (blueprints.openapi.ErrorSchema)
    error_examples: Mapping[int, Any] = field(default_factory=dict)
    # Error codes a well-formed request may still be answered with, by status: the business rules'
    # refusals (a price beyond the venue's delivery area). Published as ``x-refusals`` on that
    # response, with an example each; the published-contract test accepts them for valid input.
    refusals: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    invalid_message: str = ""  # the 400's message for a bad input ("" : the loader's own)
    # Run on the raw JSON body before it is loaded: a check that must not wait for the whole load
    # (the real-time offer's cap on transactions).
    before_load: Callable[[Any], None] | None = None
    status: int = 200  # of the success answer (202 for work accepted and done later)
    # A request body the view reads itself (an upload): media type -> OpenAPI media object. Documented only.
    request_media: Mapping[str, Any] | None = None
    headers: tuple[dict[str, Any], ...] = ()  # header parameters, as OpenAPI parameter objects
    response_headers: Mapping[str, Any] = field(default_factory=dict)  # of the success answer
    response_example: Any = None
    other_answers: Mapping[int, str] = field(default_factory=dict)  # other successes: status -> description


def operation(base: Operation | None = None, /, **contract: Any) -> Callable[[View], View]:
    """Declare the view's contract (see :class:`Operation`), or ``base`` with some fields changed;
    the view is wrapped to load and dump as declared (see the module's docstring)."""
    declaration = replace(base, **contract) if base is not None else Operation(**contract)

    def mark(view: View) -> View:
        run = _executing(view, declaration)
        run.operation = declaration  # type: ignore[attr-defined]
        return run

    return mark


def _executing(view: View, declaration: Operation) -> View:
    query = declaration.query
    body = declaration.body if isinstance(declaration.body, Schema) else None
    response = declaration.response if isinstance(declaration.response, Schema) else None
    if query is None and body is None and response is None:
        return view
    loads: dict[str, Callable[[], Any]] = {}
    if query is not None:
        message = declaration.invalid_message or "Invalid query parameters."
        loads["query"] = lambda: load_query(query, message)
    if body is not None:
        message, check = declaration.invalid_message or "Invalid request.", declaration.before_load

        def load_body() -> Any:
            raw = json_body()
            if check is not None:
                check(raw)
            return load_or_400(body, raw, message)

        loads["body"] = load_body

    steps = tuple(loads.items())
    status = declaration.status

    @functools.wraps(view)
    def run(*args: Any, **kwargs: Any) -> Any:
        for name, load in steps:
            kwargs[name] = load()
        result = view(*args, **kwargs)
        if response is None or isinstance(result, Response):
            return result
        answer = jsonify(response.dump(result))
        answer.status_code = status
        return answer

    return run  # type: ignore[return-value]


def declared(view: Callable[..., Any]) -> Operation | None:
    """The contract ``view`` declared (``functools.wraps`` keeps it on a guarded view), or None."""
    return getattr(view, "operation", None)
