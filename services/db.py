"""Engine and session construction: one engine per process, one session per unit of work."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, sessionmaker

T = TypeVar("T")
log = logging.getLogger("courier.db")


class Base(DeclarativeBase):
    """Declarative base of every Courier table; ``Base.metadata`` is what Alembic compares."""


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = 5000) -> Engine:
    """Create the process's engine.

    SQLite gets WAL (readers never block the writer and vice versa, so several gunicorn
    workers share one file), a busy timeout (a second writer waits instead of failing with
    "database is locked"), foreign keys on (off by default in SQLite) and synchronous=NORMAL
    (safe with WAL, far fewer fsyncs).  Other databases get pre-ping so connections killed by
    the server are replaced instead of failing a request.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": sqlite_busy_timeout_ms / 1000.0, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001 - DBAPI hook signature
            cursor = dbapi_connection.cursor()
            if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(sqlite_busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker:
    # expire_on_commit=False: values read before commit stay usable after it (views serialise
    # after committing), without a second round trip.
    return sessionmaker(bind=engine, expire_on_commit=False)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def driver_reason(exc: BaseException) -> str:
    """The first line of a database error's own message: SQLAlchemy wraps the driver's error (``orig``),
    whose message runs to several lines (and the wrapper's adds SQL and a link)."""
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [""])[0]


def is_locked(exc: BaseException) -> bool:
    """A SQLite database another process holds (SQLITE_BUSY or SQLITE_LOCKED after the busy timeout),
    told by the driver's error code, not its text."""
    import sqlite3

    cause = getattr(exc, "orig", None) or exc
    return getattr(cause, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def through_outage(work: Callable[[], T], budget_s: float, *, what: str,
                   sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """``work()``, called again while the database cannot be reached, for up to ``budget_s`` seconds.

    For long work that must not die of a short outage (an offers run's coordinator and writer: a
    PostgreSQL restart refuses connections for under a second, measured 0.74 s, and used to end a
    run at once, left ``running``). ``work`` opens its own session each time, so a connection the
    outage broke is not reused. Backoff 0.2 s doubling to 2 s; past the budget the last error is
    raised and the caller stops as it always did.
    """
    started: float | None = None
    delay = 0.2
    while True:
        try:
            return work()
        except (OperationalError, InterfaceError) as exc:
            now = clock()
            if started is None:
                started = now
                log.warning("database unreachable; waiting for it", extra={"what": what, "budget_s": budget_s,
                                                                            "error": driver_reason(exc)})
            if now - started >= budget_s:
                raise
            sleep(min(delay, budget_s - (now - started)))
            delay = min(delay * 2, 2.0)
