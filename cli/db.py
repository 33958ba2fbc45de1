"""``flask db``: apply and inspect schema migrations (Alembic)."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from capabilities.runtime import runtime
from services import migrations


def require_migrated(engine) -> None:
    """Stop a command early, with the fix, when the database schema is not at head."""
    status = migrations.schema_status(engine)
    if not status.at_head:
        raise click.ClickException(
            f"database schema is at {status.current or 'no revision'}, expected {status.head}: run `flask db upgrade`")


def _engine():
    return runtime().engine


@click.group("db", help="Database schema migrations (Alembic).")
def db_group() -> None:
    pass


@db_group.command("upgrade", help="Apply migrations up to REVISION (default: head).")
@click.argument("revision", default="head")
@with_appcontext
def upgrade(revision: str) -> None:
    migrations.upgrade(_engine(), revision)
    status = migrations.schema_status(_engine())
    click.echo(f"database at revision {status.current} (head {status.head})")


@db_group.command("downgrade", short_help="Revert migrations (e.g. -1, base).",
                  help="Revert migrations down to REVISION: a revision id, -N (N steps back) or base.",
                  context_settings={"ignore_unknown_options": True})  # "-1" is a revision, not an option
@click.argument("revision", type=click.STRING)
@with_appcontext
def downgrade(revision: str) -> None:
    migrations.downgrade(_engine(), revision)
    click.echo(f"database at revision {migrations.schema_status(_engine()).current}")


@db_group.command("current", help="Show the database's revision and the migrations' head.")
@with_appcontext
def current() -> None:
    status = migrations.schema_status(_engine())
    click.echo(f"current: {status.current}\nhead:    {status.head}\nat head: {status.at_head}")


@db_group.command("check", help="Fail if the models and the migrated schema disagree.")
@with_appcontext
def check() -> None:
    drift = migrations.schema_drift(_engine())
    if drift:
        for diff in drift:
            click.echo(f"drift: {diff}", err=True)
        raise SystemExit(1)
    click.echo("models and migrations agree")
