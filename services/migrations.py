"""Alembic glue: build a config for an engine, apply migrations, tell whether the schema is at head."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from config import PROJECT_ROOT


def alembic_config(engine: Engine) -> Config:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.attributes["engine"] = engine
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """Head of the migration scripts; cached because scanning the scripts costs milliseconds."""
    script = ScriptDirectory.from_config(Config(str(PROJECT_ROOT / "alembic.ini")))
    return script.get_current_head()


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str | None

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def schema_status(engine: Engine) -> SchemaStatus:
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return SchemaStatus(current=current, head=head_revision())


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(engine), revision)


def schema_drift(engine: Engine) -> list:
    """Differences between the models and the migrated database (empty when they agree)."""
    from services.tables import Base

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def database_readiness(engine: Engine):
    """Readiness check: the database answers and its schema is at the migrations' head."""

    def check() -> str | None:
        status = schema_status(engine)
        if not status.at_head:
            return (f"schema is at {status.current or 'no revision'}, migrations head is {status.head}; "
                    "run `flask db upgrade`")
        return None

    return check
