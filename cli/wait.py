"""``flask wait-for``: wait until the database (or its migrations, or the broker) is there.

The image's entrypoint runs it from ``COURIER_WAIT_FOR`` before a container's command, so a web or
worker container started before PostgreSQL, Redis or the migrate job simply waits (saying what for)
instead of failing and being restarted in a loop.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from flask.cli import with_appcontext

from capabilities.runtime import runtime
from services.db import ping
from services.migrations import database_readiness
from services.waiting import Check, wait_for

# How often to say what is still awaited: once every few seconds is enough to read in a log, and
# checks themselves run every 0.5 s (a database that comes up is used within half a second).
_SAY_EVERY_S = 5.0


def _database() -> Check:
    engine = runtime().engine

    def check() -> str | None:
        ping(engine)  # raises while the database cannot be reached
        return None

    return check


def _migrated() -> Check:
    return database_readiness(runtime().engine)


def _broker() -> Check:
    from capabilities.offers import offers_capability
    from services.offers.runs.errors import DistributedUnavailable

    queue = offers_capability().distributed.queue()

    def check() -> str | None:
        try:
            queue.check()
        except DistributedUnavailable as exc:  # its message names the URL (password masked) and the fix
            return str(exc)
        return None

    return check


TARGETS: dict[str, Callable[[], Check]] = {"database": _database, "migrated": _migrated, "broker": _broker}


@click.command("wait-for", short_help="Wait for the database, its migrations or the broker.",
               help="Wait until every TARGET is ready: database (answers), migrated (at the migrations' head, "
                    "e.g. after `flask db upgrade` ran elsewhere), broker (the Celery broker answers). Exits 0 when "
                    "all are, 1 after --timeout seconds, naming what is still missing and why.")
@click.argument("targets", nargs=-1, required=True, type=click.Choice(sorted(TARGETS)))
@click.option("--timeout", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Seconds to wait in all.")
@with_appcontext
def wait_for_command(targets: tuple[str, ...], timeout: float) -> None:
    checks = {name: TARGETS[name]() for name in dict.fromkeys(targets)}
    said = [-_SAY_EVERY_S]

    def say(pending: dict[str, str], elapsed: float) -> None:
        if elapsed - said[0] >= _SAY_EVERY_S:
            said[0] = elapsed
            click.echo(f"waiting ({elapsed:.0f} s) for " + "; ".join(f"{k}: {v}" for k, v in pending.items()),
                       err=True)

    outcome = wait_for(checks, timeout, on_pending=say)
    if not outcome.ready:
        raise click.ClickException(f"gave up after {outcome.waited_s:.0f} s waiting for "
                                   + "; ".join(f"{k}: {v}" for k, v in outcome.pending.items()))
    click.echo(f"ready after {outcome.waited_s:.1f} s: {', '.join(checks)}")
