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
