"""The process's runtime (engine, session factory, readiness checks, closers): built first, used by
every other capability, reached through ``runtime()``."""

from __future__ import annotations

from flask import Flask, current_app

from config import ConfigError
from services.runtime import Runtime

EXTENSION = "courier"


def runtime(app: Flask | None = None) -> Runtime:
    """The runtime of ``app``, or of the current app."""
    return (app or current_app).extensions[EXTENSION]


def init_app(app: Flask) -> Runtime:
    """One engine for the process (``COURIER_DATABASE_URL``) and its session factory; the database's
    readiness check."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from services.db import make_engine, make_session_factory
    from services.migrations import database_readiness

    try:
        engine = make_engine(app.config["DATABASE_URL"], sqlite_busy_timeout_ms=app.config["SQLITE_BUSY_TIMEOUT_MS"])
    except (ImportError, NoSuchModuleError, ArgumentError) as exc:
        extra = " (pip install -e '.[postgres]')" if "postgres" in app.config["DATABASE_URL"] else ""
        raise ConfigError(f"COURIER_DATABASE_URL cannot be used: {type(exc).__name__}: {exc}; is its database "
                          f"driver installed?{extra}") from None
    built = app.extensions[EXTENSION] = Runtime(engine=engine, session_factory=make_session_factory(engine))
    built.readiness_checks["database"] = database_readiness(engine)
    return built
