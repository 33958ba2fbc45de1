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
