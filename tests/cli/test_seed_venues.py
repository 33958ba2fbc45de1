"""`flask seed-venues`: idempotent import of bundled venue data; a bad file writes nothing."""

from services.estimate.prep_times import read_snapshot


def test_loads_the_bundled_prep_times_idempotently(runner, db_session):
    first = runner.invoke(args=["seed-venues"])
    assert first.exit_code == 0, first.output
    assert "100 inserted, 0 updated, 0 unchanged" in first.output
    second = runner.invoke(args=["seed-venues"])
    assert "0 inserted, 0 updated, 100 unchanged" in second.output
    assert len(read_snapshot(db_session).times) == 100


def test_other_prep_times_file(runner, db_session, tmp_path):
    path = tmp_path / "prep.csv"
    path.write_text("venue_id,avg_preparation_time\nv1,4.5\nv2,6\n")
    result = runner.invoke(args=["seed-venues", "--prep-times", str(path)])
    assert result.exit_code == 0, result.output
    assert read_snapshot(db_session).times == {"v1": 4.5, "v2": 6.0}


def test_bad_rows_are_reported_and_nothing_is_written(runner, db_session, tmp_path):
    runner.invoke(args=["seed-venues"])
    before = read_snapshot(db_session)
    path = tmp_path / "bad.csv"
    path.write_text("venue_id,avg_preparation_time\n8a61b8c,1.0\n,3\nx,-2\n")
    result = runner.invoke(args=["seed-venues", "--prep-times", str(path)])
    assert result.exit_code == 1
    assert "line 3: empty venue_id" in result.output and "line 4" in result.output
    assert "nothing written" in result.output
    db_session.expire_all()
    assert read_snapshot(db_session) == before


def _venue_rows(db_session):
    from sqlalchemy import select

    from services.tables import Venue

    db_session.expire_all()
    return {v.slug: (v.base_price, v.distance_ranges) for v in db_session.scalars(select(Venue))}


def test_loads_all_five_bundled_venues_idempotently(runner, db_session):
    first = runner.invoke(args=["seed-venues"])
    assert "venues" in first.output and "5 inserted, 0 updated" in first.output
    second = runner.invoke(args=["seed-venues"])
    assert "0 inserted, 5 updated" in second.output
    rows = _venue_rows(db_session)
    assert sorted(rows) == [f"home-assignment-venue-{c}" for c in
                            ("berlin", "helsinki", "stockholm", "tallinn", "tokyo")]
    assert rows["home-assignment-venue-tokyo"][0] == 49


def test_a_bad_venue_file_is_named_and_nothing_is_written(runner, db_session, tmp_path):
    import shutil

    from config import DATA_DIR

    runner.invoke(args=["seed-venues"])
    before = _venue_rows(db_session)
    folder = tmp_path / "venues"
    shutil.copytree(DATA_DIR / "venues", folder)
    (folder / "home-assignment-venue-berlin.dynamic.json").write_text('{"venue_raw": {"delivery_specs": {}}}')
    (folder / "home-assignment-venue-tokyo.static.json").write_text("{broken")
    (folder / "new-venue.static.json").write_text((folder / "home-assignment-venue-tallinn.static.json").read_text())
    result = runner.invoke(args=["seed-venues", "--venues-dir", str(folder)])
    assert result.exit_code == 1
    assert "berlin.dynamic.json: missing venue_raw.delivery_specs.order_minimum_no_surcharge" in result.output
    assert "tokyo.static.json: not valid JSON" in result.output
    assert "new-venue.dynamic.json: missing" in result.output
    assert _venue_rows(db_session) == before


def test_from_api_refreshes_stored_venues(runner, db_session):
    import responses

    from tests.conftest import VENUE_API
    from tests.pricing_fixtures import SLUGS, doc, register_venue

    runner.invoke(args=["seed-venues"])
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        for slug in SLUGS:
            if slug != "tokyo":
                register_venue(mock, VENUE_API, slug)
        cheaper = doc("tokyo", "dynamic")
        cheaper["venue_raw"]["delivery_specs"]["delivery_pricing"]["base_price"] = 39
        mock.get(f"{VENUE_API}/venues/home-assignment-venue-tokyo/static", json=doc("tokyo", "static"))
        mock.get(f"{VENUE_API}/venues/home-assignment-venue-tokyo/dynamic", json=cheaper)
        result = runner.invoke(args=["seed-venues", "--from-api"])
    assert result.exit_code == 0, result.output
    assert "0 inserted, 5 updated" in result.output
    assert _venue_rows(db_session)["home-assignment-venue-tokyo"][0] == 39


def test_from_api_reports_failures_per_slug(runner, db_session):
    import responses

    from tests.conftest import VENUE_API

    with responses.RequestsMock() as mock:
        mock.get(f"{VENUE_API}/venues/ghost/static", status=404)
        mock.get(f"{VENUE_API}/venues/ghost/dynamic", status=404)
        result = runner.invoke(args=["seed-venues", "--from-api", "ghost"])
    assert result.exit_code == 1 and "ghost: failed (venue_not_found" in result.output


def _set_prep_time(db_session, venue_id, minutes):
    from services.estimate.prep_times import upsert_prep_times

    with db_session.begin():
        upsert_prep_times(db_session, {venue_id: minutes})  # what an operator's change amounts to


def test_an_operators_changed_prep_time_is_kept_and_reported(runner, db_session):
    runner.invoke(args=["seed-venues"])
    _set_prep_time(db_session, "8a61b8c", 42.0)
    result = runner.invoke(args=["seed-venues"])
    assert result.exit_code == 0, result.output
    assert "0 inserted, 0 updated, 99 unchanged, 1 kept" in result.output
    assert "kept 1 stored time(s) that differ from the file: 8a61b8c (--overwrite replaces them)" in result.output
    db_session.expire_all()
    assert read_snapshot(db_session).times["8a61b8c"] == 42.0


def test_overwrite_replaces_changed_prep_times(runner, db_session):
    runner.invoke(args=["seed-venues"])
    _set_prep_time(db_session, "8a61b8c", 42.0)
    result = runner.invoke(args=["seed-venues", "--overwrite"])
    assert "0 inserted, 1 updated, 99 unchanged, 0 kept" in result.output
    db_session.expire_all()
    assert read_snapshot(db_session).times["8a61b8c"] != 42.0


def test_from_api_touches_venue_pricing_data_only(runner, db_session):
    import responses

    from tests.conftest import VENUE_API
    from tests.pricing_fixtures import register_venue

    runner.invoke(args=["seed-venues"])
    _set_prep_time(db_session, "8a61b8c", 42.0)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        register_venue(mock, VENUE_API, "helsinki")
        result = runner.invoke(args=["seed-venues", "--from-api", "home-assignment-venue-helsinki"])
    assert result.exit_code == 0, result.output
    assert "prep times" not in result.output and "0 inserted, 1 updated" in result.output
    db_session.expire_all()
    assert read_snapshot(db_session).times["8a61b8c"] == 42.0


def test_offline_from_api_says_one_line_per_venue_with_its_attempts_and_no_retry_noise(runner, db_url):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    assert runner.invoke(args=["seed-venues"]).exit_code == 0  # the five bundled venues are stored
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens once the socket is closed
    env = {**os.environ, "COURIER_DATABASE_URL": db_url, "COURIER_VENUE_API_URL": f"http://127.0.0.1:{closed_port}/v1"}
    result = subprocess.run([str(Path(sys.executable).with_name("flask")), "--app", "wsgi", "seed-venues",
                             "--from-api"], env=env, cwd=Path(__file__).parents[2], capture_output=True, text=True,
                            timeout=60)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1
    assert len(lines) == 6 and "urllib3" not in result.stderr and "Retrying" not in result.stderr, lines
    assert sum("failed after 2 attempts (upstream_unavailable: venue-api is unreachable)" in line
               for line in lines) == 5
    assert result.stdout.strip().endswith("0 inserted, 0 updated, 5 failed")
