"""What every ``flask`` command of ours gets around its body, applied once by ``create_app``.

- An id for the invocation (``cli-<command>-<12 hex>``) on every log line it writes and sent as
  ``X-Request-ID`` on its outbound calls (the venue API for ``seed-venues --from-api``, partners
  for ``partners check``), as a request's id is; an offers run replaces it with ``run-<id>``.
- A database it cannot use answered in one line, not a traceback: without this, ``flask db
  upgrade`` (or ``seed-venues``, ``run-offers``, ``api-keys list``...) with the database down
  printed forty lines of SQLAlchemy and driver frames. Now: what failed, the URL with its password
  masked, and what to check, as a ``click.ClickException`` (exit 1), the one way our commands exit
  with an error.
- The interpreter's exit kept short: every object alive when the command ends is frozen
  (``gc.freeze``) at exit, so the full collections Python runs while finalising skip them. After
  a 100k-member ``run-offers --output`` they took ~0.25 s of the process's 5-7 s (perf: the last
  0.3 s were ``gc_collect_main``); frozen, the exit takes ~0.07 s. What that gives up: garbage
  left in reference cycles at exit is not collected (its ``__del__`` not run), which Python does
  not promise at exit anyway; our commands close what they write in ``with`` blocks.
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
from collections.abc import Callable
from typing import Any

import click
from flask.cli import ScriptInfo
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from capabilities.runtime import runtime
from services.db import driver_reason, is_locked
from services.logs import request_id_var

_WRAPPED = "courier_invocation_wrapped"


@functools.cache  # once per process
def _freeze_at_exit() -> None:
    """Freeze what is alive when the interpreter starts to exit (see above)."""
    atexit.register(gc.freeze)


def wrap_commands(command: click.Command) -> None:
    """Wrap the callback of ``command``, or of every command under a group (once: commands are
    module-level objects shared by every app a process builds)."""
    if isinstance(command, click.Group):
        for sub in list(command.commands.values()):
            wrap_commands(sub)
    elif command.callback is not None and not getattr(command.callback, _WRAPPED, False):
        command.callback = _wrapped(command.callback)


def _wrapped(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        name = click.get_current_context().command_path.split(" ", 1)[-1].replace(" ", "-")
        token = request_id_var.set(request_id_var.get() or f"cli-{name}-{os.urandom(6).hex()}")
        _freeze_at_exit()
        try:
            return callback(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            raise click.ClickException(_explain(exc)) from None
        finally:
            request_id_var.reset(token)

    setattr(run, _WRAPPED, True)
    return run


def _explain(exc: OperationalError | InterfaceError) -> str:
    reason = driver_reason(exc)
    app = click.get_current_context().ensure_object(ScriptInfo).load_app()
    url = make_url(app.config["DATABASE_URL"]).render_as_string(hide_password=True)
    if is_locked(exc):  # it answered, so "is its schema migrated?" would send the operator the wrong way
        return (f"the database at {url} is locked by another process ({reason}, after waiting "
                f"COURIER_SQLITE_BUSY_TIMEOUT_MS={app.config['SQLITE_BUSY_TIMEOUT_MS']}): retry when it is done; "
                "for concurrent writers use PostgreSQL")
    try:  # can we reach it at all? (a missing table is an OperationalError too)
        with runtime(app).engine.connect():
            pass
    except (OperationalError, InterfaceError):
        return (f"cannot reach the database at {url} ({reason}): check COURIER_DATABASE_URL and that the "
                "server is running")
    return f"the database at {url} failed: {reason} (is its schema migrated? `flask db upgrade`)"
