"""What a view declares about its contract, once: the OpenAPI document is generated from these.

A view names the schema it loads its input with and the schema it dumps its answer with in one
``@operation(...)`` declaration, and uses those same schema objects in its body;
``blueprints/openapi.py`` walks the app's URL map and turns each declaration into an OpenAPI
operation with apispec's marshmallow plugin. Nothing wraps the view: a declaration is an
attribute read once at start-up, so it costs a request nothing (the hot paths' fast loads stay).

Why not flask-smorest: its ``@arguments``/``@response`` decorators parse with webargs and dump on
every call around the view, which would put marshmallow's generic loading back on the pricing and
estimate paths that ``quick_load`` keeps it off (~20 us of a ~120 us warm price), and its
Blueprint brings its own error payloads beside our envelope. What we need from it, schema to
OpenAPI conversion, is apispec, which it uses too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from marshmallow import Schema

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


def operation(base: Operation | None = None, /, **contract: Any) -> Callable[[View], View]:
    """Declare the view's contract (see :class:`Operation`), or ``base`` with some fields changed;
    returns the view itself, unwrapped."""
    declaration = replace(base, **contract) if base is not None else Operation(**contract)

    def mark(view: View) -> View:
        view.operation = declaration  # type: ignore[attr-defined]
        return view

    return mark


def declared(view: Callable[..., Any]) -> Operation | None:
    """The contract ``view`` declared (``functools.wraps`` keeps it on a guarded view), or None."""
    return getattr(view, "operation", None)
