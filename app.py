"""Courier's application factory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from types import FunctionType
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from config import ConfigError, load_settings


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


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build a fully wired Courier app.

    Configuration: ``config.SETTINGS`` defaults, then ``COURIER_*`` environment variables, then
    ``config``, each value parsed and checked by ``config.load_settings`` (a bad one raises
    ``ConfigError``).  Nothing is created at import time; everything a process holds (engine,
    HTTP sessions, model) hangs off ``app.extensions["courier"]`` (a ``Runtime``).
    """
    app = CourierFlask(__name__, instance_relative_config=True)
    app.config.update(load_settings(os.environ, config))  # typed and checked once; ConfigError names the culprit
    if not app.config["DATABASE_URL"]:
        os.makedirs(app.instance_path, exist_ok=True)
        app.config["DATABASE_URL"] = "sqlite:///" + os.path.join(app.instance_path, "courier.db")
    if not app.config["SERVICE_URL"]:
        from services.offers.partners import service_url_from_bind

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

    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from blueprints import register_blueprints
    from blueprints.auth import protect
    from blueprints.errors import register_error_handlers
    from blueprints.hooks import register_request_hooks
    from blueprints.openapi import register_openapi
    from cli import register_cli
    from services.db import make_engine, make_session_factory
    from services.logs import configure_logging
    from services.migrations import database_readiness
    from services.runtime import Runtime

    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    try:
        engine = make_engine(app.config["DATABASE_URL"], sqlite_busy_timeout_ms=app.config["SQLITE_BUSY_TIMEOUT_MS"])
    except (ImportError, NoSuchModuleError, ArgumentError) as exc:
        extra = " (pip install -e '.[postgres]')" if "postgres" in app.config["DATABASE_URL"] else ""
        raise ConfigError(f"COURIER_DATABASE_URL cannot be used: {type(exc).__name__}: {exc}; is its database "
                          f"driver installed?{extra}") from None
    runtime = Runtime(engine=engine, session_factory=make_session_factory(engine))
    app.extensions["courier"] = runtime
    runtime.readiness_checks["database"] = database_readiness(engine)

    _init_estimate(app, runtime)
    _init_pricing(app, runtime)
    _init_offers(app, runtime)

    register_request_hooks(app)
    register_error_handlers(app)
    register_blueprints(app)
    protect(app, app.config["OPEN_SCOPES"])
    register_openapi(app)
    register_cli(app)
    return app


def _init_estimate(app: Flask, runtime) -> None:
    """Load the model (a failure makes /readyz 503, not the process die) and the prep-time cache."""
    import logging

    from services.estimate.model import ModelLoadError, load_model
    from services.estimate.prep_times import PrepTimeCache

    model, problem = None, None
    try:
        model = load_model(app.config["MODEL_PATH"])
    except ModelLoadError as exc:
        problem = str(exc)
        logging.getLogger("courier.estimate").error("model not loaded", extra={"problem": problem})
    runtime.services["estimate_model"] = model
    if model is not None:
        from services.metrics import metrics

        metrics().model_info.labels(model.version).set(1)
    prep_times = PrepTimeCache(runtime.session_factory, app.config["PREP_TIMES_RELOAD_S"])
    runtime.services["prep_times"] = prep_times
    runtime.warmers["prep_times"] = prep_times.get
    runtime.readiness_checks["model"] = lambda: problem


def _init_pricing(app: Flask, runtime) -> None:
    from services.pricing.venue_api import VenueApiClient, venue_api_policy
    from services.pricing.venue_store import VenueCachePolicy, VenueStore

    cfg = app.config
    client = None
    if cfg["VENUE_API_URL"]:
        client = VenueApiClient(cfg["VENUE_API_URL"], venue_api_policy(
            connect_timeout_s=cfg["VENUE_API_CONNECT_TIMEOUT_S"], read_timeout_s=cfg["VENUE_API_READ_TIMEOUT_S"],
            retries=cfg["VENUE_API_RETRIES"], deadline_s=cfg["VENUE_API_DEADLINE_S"],
            pool_maxsize=cfg["HTTP_POOL_MAXSIZE"]))
    store = VenueStore(client, runtime.session_factory, VenueCachePolicy(
        static_ttl_s=cfg["VENUE_STATIC_TTL_S"], dynamic_ttl_s=cfg["VENUE_DYNAMIC_TTL_S"],
        max_stale_s=cfg["VENUE_MAX_STALE_S"], failure_backoff_s=cfg["VENUE_FAILURE_BACKOFF_S"],
        enabled=cfg["VENUE_CACHE_ENABLED"], wait_s=cfg["VENUE_API_DEADLINE_S"] + 0.5))
    runtime.services["venues"] = store
    runtime.closers.append(store.close)


def _init_offers(app: Flask, runtime) -> None:
    from services.offers.realtime import RealtimeOffers

    realtime = RealtimeOffers(app.config["PARTNERS_FILE"], app.config["OFFERS_REALTIME_DEADLINE_S"],
                              service_url=app.config["SERVICE_URL"])
    runtime.services["realtime_offers"] = realtime
    runtime.closers.append(realtime.close)
    _init_distributed_offers(app, runtime)


def _init_distributed_offers(app: Flask, runtime) -> None:
    """Celery for ``run-offers --distributed`` and its workers; Celery itself is imported on first use."""
    from services.offers.celery_tasks import CelerySettings, DistributedOffers
    from services.offers.partners import load_registry

    cfg = app.config

    def partner_config(name: str):
        return load_registry(cfg["PARTNERS_FILE"], cfg["SERVICE_URL"]).get(name)

    runtime.services["distributed_offers"] = DistributedOffers(
        CelerySettings(broker_url=cfg["CELERY_BROKER_URL"], result_backend=cfg["CELERY_RESULT_BACKEND"],
                       visibility_timeout_s=cfg["CELERY_VISIBILITY_TIMEOUT_S"],
                       chunk_max_attempts=cfg["OFFERS_CHUNK_MAX_ATTEMPTS"]),
        context_factory=app.app_context, sessions=runtime.session_factory, partner_config=partner_config)
