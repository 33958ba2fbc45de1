"""`flask wait-for`: a container waits for its database, its migrations and its broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from tests.live_servers import ROOT, free_port

FLASK = str(Path(sys.executable).with_name("flask"))


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURIER_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(COURIER_LOG_LEVEL="WARNING", **settings)
    return env


def test_it_waits_for_the_migrations_and_returns_once_they_ran(tmp_path):
    """The web container's case: started before the migrate job finished. The command says what it
    waits for (the event this test waits on), then the migrations run, then it exits 0."""
    env = _env(COURIER_DATABASE_URL=f"sqlite:///{tmp_path / 'new.db'}")
    waiting = subprocess.Popen([FLASK, "--app", "wsgi", "wait-for", "migrated", "--timeout", "120"], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = waiting.stderr.readline()  # printed after the first round found the schema missing
        assert first.startswith("waiting (0 s) for migrated: schema is at no revision"), first
        assert "flask db upgrade" in first
        migrate = subprocess.run([FLASK, "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stderr
        out, _ = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0
    assert out.startswith("ready after ") and out.strip().endswith("migrated")


def test_it_gives_up_after_the_timeout_naming_what_is_missing(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}", "ACCESS_LOG": False})
    result = app.test_cli_runner().invoke(args=["wait-for", "database", "migrated", "--timeout", "0"])
    assert result.exit_code == 1
    assert "gave up after 0 s waiting for migrated: schema is at no revision" in result.output
    assert "database" not in result.output.split("waiting for", 1)[1]  # SQLite answers: only the schema is missing
    app.extensions["courier"].close()


def test_an_unreachable_database_is_named_with_the_drivers_reason(tmp_path):
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    url = f"postgresql://courier:pw@127.0.0.1:{free_port()}/courier"
    result = subprocess.run([FLASK, "--app", "wsgi", "wait-for", "database", "--timeout", "0"], cwd=ROOT,
                            env=_env(COURIER_DATABASE_URL=url), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "waiting for database: OperationalError: connection" in result.stderr, result.stderr
    assert "pw" not in result.stderr.replace("pwd", "")


def test_an_unreachable_broker_is_named_without_its_password(tmp_path):
    pytest.importorskip("celery", reason="the distributed extra is not installed")
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "ACCESS_LOG": False,
                      "CELERY_BROKER_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"})
    result = app.test_cli_runner().invoke(args=["wait-for", "broker", "--timeout", "0"])
    assert result.exit_code == 1
    assert "waiting for broker: cannot reach the Celery broker at redis://" in result.output
    assert "hunter2" not in result.output
    app.extensions["courier"].close()


def test_an_unknown_target_is_a_usage_error(runner):
    result = runner.invoke(args=["wait-for", "redis"])
    assert result.exit_code == 2 and "'redis' is not one of" in result.output
