"""`flask db`: upgrade applies migrations; check compares models with the schema."""

import pytest

from app import create_app
from config import PROJECT_ROOT


def test_upgrade_then_check_on_a_new_database(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}", "ACCESS_LOG": False})
    runner = app.test_cli_runner()
    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "at revision" in result.output
    assert app.test_client().get("/readyz").status_code == 200
    check = runner.invoke(args=["db", "check"])
    assert check.exit_code == 0 and "agree" in check.output


def test_current_reports_head(runner):
    result = runner.invoke(args=["db", "current"])
    assert result.exit_code == 0
    assert "at head: True" in result.output


def test_downgrade_minus_one_steps_back_one_revision_as_its_help_says(runner):
    from services import migrations

    head = migrations.schema_status(runner.app.extensions["courier"].engine).head
    result = runner.invoke(args=["db", "downgrade", "-1"])
    assert result.exit_code == 0, result.output
    status = migrations.schema_status(runner.app.extensions["courier"].engine)
    assert status.current != head and not status.at_head
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0


def test_db_help_lists_downgrade_with_its_whole_summary(runner):
    listing = runner.invoke(args=["db", "--help"]).output
    assert "Revert migrations (e.g. -1, base)." in listing


def _port_nobody_listens_on() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again at once: connecting to it is refused


def test_every_command_answers_an_unreachable_database_with_one_line_not_a_traceback():
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    url = f"postgresql+psycopg://courier:s3cret@127.0.0.1:{_port_nobody_listens_on()}/courier"
    app = create_app({"DATABASE_URL": url, "ACCESS_LOG": False})
    runner = app.test_cli_runner()
    commands = (["db", "upgrade"], ["db", "current"], ["seed-venues"], ["api-keys", "list"], ["offers", "report", "1"])
    for args in commands:
        result = runner.invoke(args=args)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("Error: cannot reach the database at postgresql+psycopg://courier:***@"), args
        assert "COURIER_DATABASE_URL" in result.output and "s3cret" not in result.output
        assert "Traceback" not in result.output and len(result.output.splitlines()) == 1


def test_a_database_that_answers_but_is_not_migrated_says_to_migrate(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "ACCESS_LOG": False})
    result = app.test_cli_runner().invoke(args=["api-keys", "list"])
    assert result.exit_code == 1
    assert "no such table: api_keys" in result.output and "`flask db upgrade`" in result.output


def test_a_database_another_process_holds_is_said_to_be_locked_not_unmigrated(tmp_path):
    """SQLite answered "database is locked" and the command said "is its schema migrated?"."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'courier.db'}"
    app = create_app({"DATABASE_URL": url, "ACCESS_LOG": False, "SQLITE_BUSY_TIMEOUT_MS": 100})
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    holder = sqlite3.connect(tmp_path / "courier.db")
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    try:
        result = runner.invoke(args=["api-keys", "create", "--name", "ci", "--scope", "runs:read"])
    finally:
        holder.rollback()
        holder.close()
    assert result.exit_code == 1
    assert "is locked by another process" in result.output and "COURIER_SQLITE_BUSY_TIMEOUT_MS=100" in result.output
    assert "migrated" not in result.output and len(result.output.splitlines()) == 1


@pytest.fixture
def project_copy(tmp_path, monkeypatch):
    """alembic.ini and migrations/ copied, so a test can write revisions without touching the checkout."""
    import shutil

    from services import migrations

    root = tmp_path / "project"
    shutil.copytree(PROJECT_ROOT / "migrations", root / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "alembic.ini", root / "alembic.ini")
    monkeypatch.setattr(migrations, "PROJECT_ROOT", root)
    migrations.head_revision.cache_clear()
    yield root
    migrations.head_revision.cache_clear()


def test_revision_autogenerates_the_next_numbered_migration_from_the_models(runner, project_copy):
    from sqlalchemy import text

    with runner.app.extensions["courier"].engine.begin() as connection:  # the models have it; the database not
        connection.execute(text("DROP INDEX ix_offer_runs_status"))
    from services import migrations

    head = migrations.head_revision()
    following = f"{int(head) + 1:04d}"
    result = runner.invoke(args=["db", "revision", "-m", "status index"])
    assert result.exit_code == 0, result.output
    [written] = (project_copy / "migrations" / "versions").glob(f"{following}_*.py")
    source = written.read_text()
    assert written.name == f"{following}_status_index.py" and f"down_revision = '{head}'" in source
    upgrade = source.split("def upgrade()")[1].split("def downgrade()")[0]
    assert "create_index(batch_op.f('ix_offer_runs_status')" in upgrade  # SQLite: batch mode (env.py)
    history = runner.invoke(args=["db", "history"])
    assert history.output.splitlines()[0] == f"{following} <- {head}: status index"


def test_revision_refuses_a_database_behind_head(runner, project_copy):
    versions = project_copy / "migrations" / "versions"
    scripts = sorted(versions.glob("*.py"))
    assert runner.invoke(args=["db", "downgrade", "-1"]).exit_code == 0
    result = runner.invoke(args=["db", "revision", "-m", "too early"])
    assert result.exit_code == 1 and "run `flask db upgrade` first" in result.output
    assert sorted(versions.glob("*.py")) == scripts  # nothing written


def test_stamp_records_a_revision_without_running_migrations(tmp_path):
    from sqlalchemy import inspect

    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'made-by-hand.db'}", "ACCESS_LOG": False})
    result = app.test_cli_runner().invoke(args=["db", "stamp", "0012"])
    assert result.exit_code == 0 and "stamped at revision 0012" in result.output
    assert inspect(app.extensions["courier"].engine).get_table_names() == ["alembic_version"]  # nothing ran


def test_history_lists_every_migration_newest_first(runner):
    lines = runner.invoke(args=["db", "history"]).output.splitlines()
    scripts = len(list((PROJECT_ROOT / "migrations" / "versions").glob("0*.py")))
    assert [line.split(" ")[0] for line in lines] == [f"{n:04d}" for n in range(scripts, 0, -1)]
    assert lines[-1].startswith("0001 <- base: ")
