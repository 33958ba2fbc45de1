"""``flask seed-venues``: load bundled venue reference data into the database."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from capabilities.estimate import estimate_capability
from capabilities.pricing import pricing_capability
from capabilities.runtime import runtime
from cli.db import require_migrated
from config import DATA_DIR
from services.errors import CourierError
from services.estimate.prep_times import PrepTimesFileError, parse_prep_times_csv, upsert_prep_times
from services.pricing.snapshots import SnapshotError, load_snapshots
from services.pricing.venue_repo import known_slugs, upsert_venue


def _refuse(summary: str, problems: list[str]) -> None:
    """Report every problem of an input and stop before anything is written."""
    click.echo(f"error: {summary}, nothing written", err=True)
    for problem in problems:
        click.echo(f"  {problem}", err=True)
    raise SystemExit(1)


@click.command("seed-venues", help="Load venue preparation times and venue pricing data into the database. "
                                   "Preparation times: missing venues are inserted; a stored time that differs "
                                   "from the file (e.g. changed by an operator) is kept and reported, unless "
                                   "--overwrite. Venue pricing data is upserted. All or nothing: a bad file is "
                                   "reported and nothing is written.")
@click.option("--prep-times", "prep_times_path", type=click.Path(dir_okay=False),
              default=str(DATA_DIR / "venue_preparation.csv"), show_default=True,
              help="CSV of venue_id,avg_preparation_time (minutes).")
@click.option("--venues-dir", type=click.Path(file_okay=False), default=str(DATA_DIR / "venues"),
              show_default=True, help="Folder of <slug>.static.json / <slug>.dynamic.json venue API snapshots.")
@click.option("--overwrite", is_flag=True,
              help="Replace stored preparation times that differ from the file (default: keep and report them).")
@click.option("--from-api", is_flag=True,
              help="Only refresh venue pricing data, from the live venue API instead of the snapshots "
                   "(the SLUGs given, or every venue already stored); preparation times are not touched.")
@click.argument("slugs", nargs=-1, type=click.STRING)
@with_appcontext
def seed_venues(prep_times_path: str, venues_dir: str, overwrite: bool, from_api: bool,
                slugs: tuple[str, ...]) -> None:
    process = runtime()
    store = pricing_capability().venues
    require_migrated(process.engine)
    times: dict[str, float] | None = None
    if not from_api:
        try:
            times = parse_prep_times_csv(prep_times_path)
        except PrepTimesFileError as exc:
            _refuse(f"{exc.path}: {len(exc.errors)} bad row(s)", [f"line {e.line}: {e.problem}" for e in exc.errors])

    if from_api:
        if store.client is None:
            raise click.UsageError("--from-api needs COURIER_VENUE_API_URL (it is empty: offline mode)")
        with process.session() as session:
            targets = list(slugs) or known_slugs(session)
        venues, failed = [], 0
        for slug in targets:
            try:
                venues.append(store.fetch_fresh(slug))
                click.echo(f"  {slug}: fetched")
            except CourierError as exc:
                failed += 1
                attempts = getattr(exc, "attempts", None)
                tries = f" after {attempts} attempts" if attempts and attempts > 1 else ""
                click.echo(f"  {slug}: failed{tries} ({exc.code}: {exc.message})", err=True)
        source = f"venue API {store.client.base_url}"
    else:
        if slugs:
            raise click.UsageError("SLUGs are only used with --from-api")
        try:
            venues = load_snapshots(venues_dir)
        except SnapshotError as exc:
            _refuse(f"{len(exc.problems)} bad venue file(s)", [f"{p.file}: {p.problem}" for p in exc.problems])
        failed = 0
        source = venues_dir

    with process.session() as session, session.begin():
        counts = upsert_prep_times(session, times, overwrite=overwrite) if times is not None else None
        created = sum(upsert_venue(session, venue) for venue in venues)
    estimate_capability().prep_times.invalidate()
    for venue in venues:
        store.forget(venue.slug)
    if counts is not None:
        click.echo(f"prep times ({prep_times_path}): {counts.inserted} inserted, {counts.updated} updated, "
                   f"{counts.unchanged} unchanged, {len(counts.kept)} kept")
        if counts.kept:
            shown = ", ".join(counts.kept[:10]) + (" ..." if len(counts.kept) > 10 else "")
            click.echo(f"  kept {len(counts.kept)} stored time(s) that differ from the file: {shown} "
                       "(--overwrite replaces them)")
    click.echo(f"venues ({source}): {created} inserted, {len(venues) - created} updated"
               + (f", {failed} failed" if failed else ""))
    if failed:
        raise SystemExit(1)
