"""``flask seed-venues``: load bundled venue reference data into the database."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from config import DATA_DIR
from services.estimate.prep_times import PrepTimesFileError, parse_prep_times_csv, upsert_prep_times


@click.command("seed-venues", help="Load venue preparation times (and venue pricing data) into the database. "
                                   "Idempotent: re-running updates changed rows only.")
@click.option("--prep-times", "prep_times_path", type=click.Path(dir_okay=False),
              default=str(DATA_DIR / "venue_preparation.csv"), show_default=True,
              help="CSV of venue_id,avg_preparation_time (minutes).")
@with_appcontext
def seed_venues(prep_times_path: str) -> None:
    runtime = current_app.extensions["courier"]
    try:
        times = parse_prep_times_csv(prep_times_path)
    except PrepTimesFileError as exc:
        click.echo(f"error: {exc.path}: {len(exc.errors)} bad row(s), nothing written", err=True)
        for error in exc.errors:
            click.echo(f"  line {error.line}: {error.problem}", err=True)
        raise SystemExit(1) from exc
    with runtime.session() as session, session.begin():
        counts = upsert_prep_times(session, times)
    runtime.services["prep_times"].invalidate()
    click.echo(f"prep times ({prep_times_path}): {counts.inserted} inserted, {counts.updated} updated, "
               f"{counts.unchanged} unchanged")
