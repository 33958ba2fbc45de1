"""Schema changes only through migrations: models and migrations must agree, both ways."""

from sqlalchemy import create_engine

from services import migrations


def test_models_and_migrations_agree(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrations.upgrade(engine)
    assert migrations.schema_drift(engine) == []
    assert migrations.schema_status(engine).at_head


def test_every_migration_downgrades_and_reapplies(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrations.upgrade(engine)
    migrations.downgrade(engine, "base")
    assert migrations.schema_status(engine).current is None
    migrations.upgrade(engine)
    assert migrations.schema_drift(engine) == []


def test_0005_relabels_past_runs_with_failed_members(tmp_path):
    """Before 0005 a run with failed members was recorded 'succeeded'; the upgrade says what happened."""
    from sqlalchemy import text

    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrations.upgrade(engine, "0004")
    insert = text("INSERT INTO offer_runs (partner, input_path, input_sha256, as_of, status, started_at, concurrency, "
                  "rows_read, rows_rejected, members_total, members_scored, members_skipped, members_failed, offers, "
                  "rejected, step_metrics) VALUES ('reference', 'x.csv', :sha, '2024-01-05', 'succeeded', "
                  "'2026-11-28 00:00:00', 8, 10, 0, 10, :scored, 0, :failed, '{}', '{}', '{}')")
    with engine.begin() as conn:
        conn.execute(insert, {"sha": "a" * 64, "scored": 10, "failed": 0})
        conn.execute(insert, {"sha": "b" * 64, "scored": 0, "failed": 10})
    migrations.upgrade(engine)
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT input_sha256, status FROM offer_runs ORDER BY id")).all()
    assert [s for _, s in statuses] == ["succeeded", "completed_with_failures"]
    migrations.downgrade(engine, "0004")
    with engine.connect() as conn:
        assert {s for (s,) in conn.execute(text("SELECT status FROM offer_runs"))} == {"succeeded"}
