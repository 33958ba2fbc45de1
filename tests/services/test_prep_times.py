"""Venue preparation times: CSV import (all-or-nothing), upsert, snapshots, and the worker cache."""

import statistics

import pytest

from services.estimate.prep_times import (
    PrepTimeCache,
    PrepTimesFileError,
    parse_prep_times_csv,
    read_snapshot,
    upsert_prep_times,
)


def write(tmp_path, text):
    path = tmp_path / "prep.csv"
    path.write_text(text)
    return path


def test_parses_a_good_file(tmp_path):
    assert parse_prep_times_csv(write(tmp_path, "venue_id,avg_preparation_time\na,1.5\n b ,10\n")) == {
        "a": 1.5, "b": 10.0}


def test_reports_every_bad_row_with_its_line_number(tmp_path):
    path = write(tmp_path, "venue_id,avg_preparation_time\nok,3\n,4\nx,abc\ny,-1\nz,nan\nw,inf\nok,5\n")
    with pytest.raises(PrepTimesFileError) as info:
        parse_prep_times_csv(path)
    problems = {e.line: e.problem for e in info.value.errors}
    assert sorted(problems) == [3, 4, 5, 6, 7, 8]
    assert "empty venue_id" in problems[3]
    assert "not a number" in problems[4]
    assert "negative" in problems[5]
    assert "not finite" in problems[6] and "not finite" in problems[7]
    assert "twice" in problems[8]


def test_wrong_header_is_refused(tmp_path):
    with pytest.raises(PrepTimesFileError, match="header"):
        parse_prep_times_csv(write(tmp_path, "id,time\na,1\n"))


def test_upsert_is_idempotent_and_bumps_the_version_only_on_change(db_session):
    first = upsert_prep_times(db_session, {"a": 1.0, "b": 2.0})
    db_session.commit()
    v1 = read_snapshot(db_session).version
    again = upsert_prep_times(db_session, {"a": 1.0, "b": 2.0})
    db_session.commit()
    assert (first.inserted, again.inserted, again.updated, again.unchanged) == (2, 0, 0, 2)
    assert read_snapshot(db_session).version == v1
    changed = upsert_prep_times(db_session, {"a": 1.5, "c": 3.0})
    db_session.commit()
    assert (changed.inserted, changed.updated, changed.unchanged) == (1, 1, 0)
    snap = read_snapshot(db_session)
    assert snap.version == v1 + 1
    assert snap.times == {"a": 1.5, "b": 2.0, "c": 3.0}


def test_default_is_the_median_of_known_venues(db_session):
    upsert_prep_times(db_session, {"a": 1.0, "b": 2.0, "c": 10.0, "d": 4.0})
    db_session.commit()
    assert read_snapshot(db_session).default == statistics.median([1.0, 2.0, 10.0, 4.0]) == 3.0


def test_cache_picks_up_a_new_version_after_its_reload_interval(app, db_session):
    cache = PrepTimeCache(app.extensions["courier"].session_factory, reload_s=3600)
    upsert_prep_times(db_session, {"a": 1.0})
    db_session.commit()
    assert cache.get().times == {"a": 1.0}
    upsert_prep_times(db_session, {"a": 9.0})
    db_session.commit()
    assert cache.get().times == {"a": 1.0}  # within the interval: no database read
    cache.invalidate()  # what the passing of the interval does
    assert cache.get().times == {"a": 9.0}
