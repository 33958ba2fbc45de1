"""Engine and session construction: one engine per process, one session per unit of work."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, sessionmaker


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
