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


@db_group.command("revision", help="Write a new migration, migrations/versions/<NNNN>_<slug>.py. With "
                  "--autogenerate (the default) Alembic fills it with what the models (services/tables.py) "
                  "add or change against this database, which must be at head. Read it before committing.")
@click.option("-m", "--message", required=True, help="What the migration does (its file name and docstring).")
@click.option("--autogenerate/--empty", default=True, help="Compare the models with the database (default), "
              "or write an empty migration to fill in by hand (data migrations).")
@with_appcontext
def revision(message: str, autogenerate: bool) -> None:
    try:
        path = migrations.new_revision(_engine(), message, autogenerate=autogenerate)
    except migrations.NotAtHead as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}")


@db_group.command("history", help="List the migrations, newest first.")
def history() -> None:
    for line in migrations.history():
        click.echo(line)


@db_group.command("stamp", help="Record REVISION (e.g. head) as the database's without running any migration: "
                  "for a schema created another way. Nothing else changes.")
@click.argument("revision")
@with_appcontext
def stamp(revision: str) -> None:
    migrations.stamp(_engine(), revision)
    click.echo(f"database stamped at revision {migrations.schema_status(_engine()).current}")
