"""Every ``flask`` command answers a database it cannot use with one line, not a traceback.

Without this, ``flask db upgrade`` (or ``seed-venues``, ``run-offers``, ``api-keys list``...) with
the database down printed forty lines of SQLAlchemy and driver frames. Now: what failed, the URL
with its password masked, and what to check, as a ``click.ClickException`` (exit 1), the one way
our commands exit with an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from flask.cli import ScriptInfo
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

_GUARDED = "courier_database_errors_guarded"


def guard_database_errors(group: click.Group) -> None:
    """Wrap the callback of every command under ``group`` (once: commands are module-level objects
    shared by every app a process builds)."""
    for command in list(group.commands.values()):
        if isinstance(command, click.Group):
            guard_database_errors(command)
        elif command.callback is not None and not getattr(command.callback, _GUARDED, False):
            command.callback = _guarded(command.callback)


def _guarded(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            raise click.ClickException(_explain(exc)) from None

    setattr(run, _GUARDED, True)
    return run


def _explain(exc: OperationalError | InterfaceError) -> str:
    reason = (str(exc.orig) if exc.orig is not None else str(exc)).strip().splitlines()[0]
    app = click.get_current_context().ensure_object(ScriptInfo).load_app()
    url = make_url(app.config["DATABASE_URL"]).render_as_string(hide_password=True)
    try:  # can we reach it at all? (a missing table is an OperationalError too)
        with app.extensions["courier"].engine.connect():
            pass
    except (OperationalError, InterfaceError):
        return (f"cannot reach the database at {url} ({reason}): check COURIER_DATABASE_URL and that the "
                "server is running")
    return f"the database at {url} failed: {reason} (is its schema migrated? `flask db upgrade`)"
