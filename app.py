"""Courier's application factory."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from functools import cached_property
from types import FunctionType
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from config import ConfigError, default_database_folder, load_settings, warn_unknown_variables


class _JsonProvider(DefaultJSONProvider):
    """Flask's JSON, except that a body nested too deeply for the parser is invalid JSON (a 400 or 422
    naming the body, like any other bad JSON), not a RecursionError and a 500."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError as exc:
            raise ValueError("JSON nested too deeply") from exc


class CourierFlask(Flask):
    """Flask, except that ``ensure_sync`` remembers which functions are plain functions.

    Flask asks ``inspect.iscoroutinefunction`` about the view and every hook on every request
    (5 calls, ~4 us per request here); a function's nature does not change, so ask once.
    """

    def ensure_sync(self, func):
        if type(func) is FunctionType:
            known = self._sync_functions.get(func)
            if known is None:
                known = self._sync_functions[func] = super().ensure_sync(func)
            return known
        return super().ensure_sync(func)

    @cached_property
    def _sync_functions(self) -> dict:
        return {}


def _write_metrics_where_the_server_reads_them(folder: str | None) -> None:
    """With ``COURIER_METRICS_DIR`` set, a process that is not one of gunicorn's workers (a ``flask``
    command, ``flask run``) writes its metrics into that folder too, so the server's ``/metrics``
    counts what an offers run did (the README's run-failure alert rests on it; without it the run's
    counters died with the command). prometheus_client chooses where values live when it is first
    imported, hence here, first thing; a process that imported it already (tests) keeps its own."""
    if not folder or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or "prometheus_client" in sys.modules:
        return
    os.makedirs(folder, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build a fully wired Courier app.

    Configuration: ``config.SETTINGS`` defaults, then ``COURIER_*`` environment variables, then
    ``config``, each value parsed and checked by ``config.load_settings`` (a bad one raises
    ``ConfigError``).  Nothing is created at import time; everything a process holds (engine,
    HTTP sessions, model) is built by the capabilities' ``init_app`` and reached through their
    accessors (``capabilities.runtime.runtime()``, ``estimate_capability()``, ...).
    """
    app = CourierFlask(__name__, instance_relative_config=True)
    app.config.update(load_settings(os.environ, config))  # typed and checked once; ConfigError names the culprit
    _write_metrics_where_the_server_reads_them(app.config["METRICS_DIR"])
    if not app.config["DATABASE_URL"]:
        folder = default_database_folder()
        os.makedirs(folder, exist_ok=True)
        app.config["DATABASE_URL"] = "sqlite:///" + str(folder / "courier.db")
    if not app.config["SERVICE_URL"]:
        from services.offers.partners.config import service_url_from_bind

        app.config["SERVICE_URL"] = service_url_from_bind(os.environ.get("COURIER_BIND"))
    from services.auth.api_keys import Scope

    try:
        app.config["OPEN_SCOPES"] = Scope.parse_list(app.config["OPEN_SCOPES"] or "")
    except ValueError as exc:
        raise ConfigError(f"COURIER_OPEN_SCOPES={app.config['OPEN_SCOPES']!r}: {exc}") from None
    app.json = _JsonProvider(app)
    # Keep the documented key order of responses; compact bodies are cheaper to send.
    app.json.sort_keys = False
    app.json.compact = True

    from blueprints import limits, register_blueprints
    from blueprints.auth import protect
    from blueprints.errors import register_error_handlers
    from blueprints.hooks import register_request_hooks
    from capabilities import estimate, offers, pricing, runtime
    from cli import register_commands
    from services.logs import configure_logging

    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    if config is None:  # settings from the environment (not a test's mapping): say what it ignores
        warn_unknown_variables(os.environ, app.config["PARTNERS_FILE"], logging.getLogger("courier.config").warning)
    # Each capability builds its state (typed, on app.extensions) from the settings; then the
    # blueprints and commands that use it are registered.
    runtime.init_app(app)
    estimate.init_app(app)
    pricing.init_app(app)
    offers.init_app(app)
    register_blueprints(app)
    register_commands(app)

    register_request_hooks(app)
    register_error_handlers(app)
    limits.init_app(app)  # before protect: the key is checked first, then its limit
    protect(app, app.config["OPEN_SCOPES"])
    return app

