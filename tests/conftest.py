"""Shared fixtures: an app on a fresh, migrated temporary database, its client and CLI runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from app import create_app
from services import migrations

FIXTURES = Path(__file__).parent / "fixtures"
VENUE_API = "http://venue-api.test/v1"


@pytest.fixture(autouse=True)
def _environment_restored():
    """Loading gunicorn.conf.py sets process-wide variables (PROMETHEUS_MULTIPROC_DIR, COURIER_LOG_FORMAT),
    as it should in gunicorn's master; a test that loads it must not change the next tests' process."""
    import os

    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory) -> Path:
    """One migrated SQLite file per test session; each test gets a copy (migrating per test is slow)."""
    path = tmp_path_factory.mktemp("template") / "courier.db"
    engine = create_engine(f"sqlite:///{path}")
    migrations.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def db_url(tmp_path, migrated_template) -> str:
    target = tmp_path / "courier.db"
    shutil.copy(migrated_template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def app_config(db_url) -> dict:
    """Override in a test module to change settings; defaults keep tests offline and quiet."""
    return {
        "TESTING": True,
        "DATABASE_URL": db_url,
        "VENUE_API_URL": VENUE_API,
        "ACCESS_LOG": False,
        # Suites send far more offers than a client may; tests/blueprints/test_limits.py sets limits.
        "RATE_LIMIT_OFFERS": "",
        "RATE_LIMIT_RUN_SUBMISSIONS": "",
    }


@pytest.fixture
def app(app_config):
    application = create_app(app_config)
    yield application
    application.extensions["courier"].close()


@pytest.fixture
def api_key(app) -> str:
    """A live key with every scope, created the way `flask api-keys create` does."""
    from services.auth.api_keys import Scope, create_key

    with app.extensions["courier"].session() as session, session.begin():
        return create_key(session, "tests", set(Scope)).key


@pytest.fixture
def client(app, api_key):
    """A client presenting a key with every scope (auth itself is tested with ``anonymous``)."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    return test_client


@pytest.fixture
def anonymous(app):
    """A client presenting no API key."""
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def db_session(app):
    session = app.extensions["courier"].session()
    yield session
    session.close()


@pytest.fixture
def seeded_prep_times(app):
    """The bundled venue preparation times, loaded the way `flask seed-venues` loads them."""
    from config import DATA_DIR
    from services.estimate.prep_times import parse_prep_times_csv, upsert_prep_times

    times = parse_prep_times_csv(DATA_DIR / "venue_preparation.csv")
    with app.extensions["courier"].session() as session, session.begin():
        upsert_prep_times(session, times)
    app.extensions["courier.estimate"].prep_times.invalidate()
    return times


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory):
    """A redis-server of the module's own (skips saying how to install one)."""
    from tests.distributed_fixtures import MissingComponent, RedisServer

    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except MissingComponent as exc:
        pytest.skip(str(exc))
    yield server
    server.close()


@pytest.fixture(scope="module")
def module_partner():
    """One reference partner for a whole module, for modules whose tests share runs against it
    (``fail`` is shared too: a test that sets it clears it)."""
    from tests.offers_fixtures import LivePartner

    partner = LivePartner()
    yield partner
    partner.close()


@pytest.fixture
def live_partner():
    """The reference partner on a loopback port (keep-alive uvicorn server in a thread)."""
    from tests.offers_fixtures import LivePartner

    partner = LivePartner()
    yield partner
    partner.close()
