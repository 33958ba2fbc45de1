"""Alembic glue: build a config for an engine, apply migrations, tell whether the schema is at head."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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


class NotAtHead(Exception):
    """A new revision is written only against a database at head (it would repeat what is pending)."""


def new_revision(engine: Engine, message: str, autogenerate: bool = True) -> Path:
    """Write ``migrations/versions/<NNNN>_<slug>.py``, the next number after the head, and return
    its path. With ``autogenerate`` Alembic fills it with the differences between the models
    (``services/tables.py``) and this database, which must be at head."""
    if autogenerate:
        status = schema_status(engine)
        if not status.at_head:
            raise NotAtHead(f"the database is at {status.current or 'no revision'}, not at head {status.head}: "
                            "run `flask db upgrade` first")
    head = head_revision()
    number = f"{int(head) + 1:04d}" if head and head.isdigit() else "0001"
    script = command.revision(alembic_config(engine), message=message, autogenerate=autogenerate, rev_id=number)
    head_revision.cache_clear()
    return Path(script.path)  # type: ignore[union-attr]


def history() -> list[str]:
    """Every migration, newest first: ``<rev> <- <down_rev>: <first line of its docstring>``."""
    scripts = ScriptDirectory.from_config(Config(str(PROJECT_ROOT / "alembic.ini")))
    return [f"{s.revision} <- {s.down_revision or 'base'}: {(s.doc or '').splitlines()[0] if s.doc else ''}"
            for s in scripts.walk_revisions()]


def stamp(engine: Engine, revision: str) -> None:
    """Record ``revision`` as the database's without running migrations (a schema made by hand)."""
    command.stamp(alembic_config(engine), revision)


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
