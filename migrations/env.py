"""Alembic environment: runs against the engine Courier hands over, or COURIER_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from services.tables import Base

config = context.config
target_metadata = Base.metadata


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    # Plain `alembic ...` on the command line: build the app's engine the app's way.
    from app import create_app

    return create_app().extensions["courier"].engine


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("Courier migrations run online only: use `flask db upgrade`.")
run_migrations_online()
