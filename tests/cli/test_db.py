"""`flask db`: upgrade applies migrations; check compares models with the schema."""

from app import create_app


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
