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
