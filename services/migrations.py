"""Alembic glue: build a config for an engine, apply migrations, tell whether the schema is at head.

Alembic is imported by the functions that run it (upgrade, revision, ...), not by this module:
importing it costs ~0.25 s (its DDL implementations pull in every SQLAlchemy dialect), and the
checks every command and probe makes (:func:`schema_status`) need only two small reads: the
``alembic_version`` row, and the head of the scripts from their ``revision``/``down_revision`` lines.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

from config import PROJECT_ROOT


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.attributes["engine"] = engine
    return cfg


_REVISION_LINE = re.compile(r"^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+)$", re.M)


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """Head of the migration scripts: the revision no other script names as its ``down_revision``
    (read from the files' assignments, ~1 ms; Alembic's ScriptDirectory would import Alembic).
    Several heads (an unmerged branch) raise, as Alembic's ``get_current_head`` does."""
    revisions: set[str] = set()
    parents: set[str | None] = set()
    for path in (PROJECT_ROOT / "migrations" / "versions").glob("*.py"):
        found = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" not in found:
            continue
        revisions.add(ast.literal_eval(found["revision"].strip()))
        down = ast.literal_eval(found.get("down_revision", "None").strip())
        parents.update(down if isinstance(down, (tuple, list)) else [down])
    heads = revisions - parents
    if len(heads) > 1:
        raise RuntimeError(f"the migrations have several heads ({', '.join(sorted(heads))}): merge them")
    return next(iter(heads), None)


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None
    head: str | None

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def schema_status(engine: Engine) -> SchemaStatus:
    with engine.connect() as conn:
        current = None
        if inspect(conn).has_table("alembic_version"):
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return SchemaStatus(current=current, head=head_revision())


def upgrade(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

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
    from alembic import command

    script = command.revision(alembic_config(engine), message=message, autogenerate=autogenerate, rev_id=number)
    head_revision.cache_clear()
    return Path(script.path)  # type: ignore[union-attr]


def history() -> list[str]:
    """Every migration, newest first: ``<rev> <- <down_rev>: <first line of its docstring>``."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(Config(str(PROJECT_ROOT / "alembic.ini")))
    return [f"{s.revision} <- {s.down_revision or 'base'}: {(s.doc or '').splitlines()[0] if s.doc else ''}"
            for s in scripts.walk_revisions()]


def stamp(engine: Engine, revision: str) -> None:
    """Record ``revision`` as the database's without running migrations (a schema made by hand)."""
    from alembic import command

    command.stamp(alembic_config(engine), revision)


def schema_drift(engine: Engine) -> list:
    """Differences between the models and the migrated database (empty when they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

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
