"""API-key checks on the views that need them.

Views declare the scope they need with ``@requires(Scope.X)``; that only marks the function.
``protect(app, open_scopes)`` then wraps, once at start-up, the views whose scope is not open,
so an open endpoint (pricing and estimate by default) pays nothing per request for auth.
A key is read from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, g, request

from blueprints.hooks import db_session
from services.auth.api_keys import Scope, verify_key
from services.errors import Forbidden, Unauthenticated

# Endpoints that need no key whatever COURIER_OPEN_SCOPES says: the bundled stand-in partner (called
# by run-offers like any partner; COURIER_REFERENCE_PARTNER_ENABLED=false removes it), Flask's static
# route, and liveness: an orchestrator's probe (kubelet, Docker's healthcheck) has no credentials, and
# a 401 there would restart a healthy container; it answers only "ok", so it tells nobody anything.
# web: its pages check their own sign-in (a session cookie, blueprints/web.py).
PUBLIC_BLUEPRINTS = frozenset({"partner_reference", "web"})
PUBLIC_ENDPOINTS = frozenset({"static", "system.healthz"})


def requires(scope: Scope) -> Callable:
    def mark(view: Callable) -> Callable:
        view.required_scope = scope  # type: ignore[attr-defined]
        return view
    return mark


def scope_of(view: Callable) -> Scope | None:
    return getattr(view, "required_scope", None)


def presented_key() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("X-API-Key") or None


def _guarded(view: Callable, scope: Scope) -> Callable:
    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        key = presented_key()
        if key is None:
            raise Unauthenticated(f"This endpoint needs an API key with scope {scope.value}: send "
                                  "'Authorization: Bearer <key>' (create one with `flask api-keys create`).",
                                  scope=scope.value)
        info = verify_key(db_session(), key)
        if info is None:
            raise Unauthenticated("The API key is invalid or revoked.", scope=scope.value)
        if scope.value not in info.scopes:
            raise Forbidden(f"The API key {info.id!r} lacks scope {scope.value}.", scope=scope.value)
        g.api_key_id = info.id  # for the access log
        return view(*args, **kwargs)

    guarded.required_scope = scope  # type: ignore[attr-defined]
    return guarded


def protect(app: Flask, open_scopes: Iterable[Scope]) -> None:
    """Wrap every view whose scope is not open; every view must declare one (or be public)."""
    open_scopes = frozenset(open_scopes)
    undeclared = []
    for endpoint, view in list(app.view_functions.items()):
        scope = scope_of(view)
        if scope is None:
            if endpoint not in PUBLIC_ENDPOINTS and endpoint.split(".", 1)[0] not in PUBLIC_BLUEPRINTS:
                undeclared.append(endpoint)
            continue
        if scope not in open_scopes:
            app.view_functions[endpoint] = _guarded(view, scope)
    if undeclared:  # fail closed: a new route cannot be served without deciding who may call it
        raise RuntimeError(f"views without a declared scope: {', '.join(sorted(undeclared))}")
