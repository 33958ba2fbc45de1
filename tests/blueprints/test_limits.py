"""Per-key rate limits on the costly calls (blueprints/limits.py, Flask-Limiter)."""

import pytest

from app import create_app
from blueprints.limits import storage_url
from config import ConfigError, load_settings
from services.auth.api_keys import Scope
from tests.auth_fixtures import keyed_client


@pytest.fixture
def app_config(app_config):
    return {**app_config, "RATE_LIMIT_RUN_SUBMISSIONS": "2/minute", "RATE_LIMIT_OFFERS": "1/minute"}


def test_over_the_limit_a_key_gets_429_with_retry_after_in_the_envelope_and_header(app):
    client = keyed_client(app, Scope.RUNS_WRITE)
    # SQLite: each start is refused (503), and still counted: a refused attempt costs the caller's budget.
    statuses = [client.post("/api/v1/offer-runs", data=b"x", content_type="text/csv").status_code for _ in range(3)]
    assert statuses == [503, 503, 429]
    limited = client.post("/api/v1/offer-runs/1/cancel")  # cancel and resume draw on the same budget
    assert limited.status_code == 429
    error = limited.get_json()
    assert error["code"] == "rate_limited" and error["details"]["limit"] == "2 per 1 minute"
    assert 1 <= error["details"]["retry_after_s"] <= 61  # whole seconds, rounded up
    assert limited.headers["Retry-After"] == str(error["details"]["retry_after_s"])


def test_each_key_has_its_own_budget(app):
    first, second = keyed_client(app, Scope.RUNS_WRITE), keyed_client(app, Scope.RUNS_WRITE)
    for _ in range(2):
        first.post("/api/v1/offer-runs/1/cancel")
    assert first.post("/api/v1/offer-runs/1/cancel").status_code == 429
    assert second.post("/api/v1/offer-runs/1/cancel").status_code == 404  # not limited: no such run


def test_real_time_offers_have_their_own_limit(app):
    client = keyed_client(app, Scope.OFFERS_SCORE, Scope.RUNS_WRITE)
    assert client.post("/api/v1/offers", json={}).status_code == 400
    assert client.post("/api/v1/offers", json={}).status_code == 429
    assert client.post("/api/v1/offer-runs/1/cancel").status_code == 404  # the runs' budget is untouched


def test_a_request_without_a_valid_key_is_refused_before_it_is_counted(app):
    anonymous = app.test_client()
    for _ in range(3):
        assert anonymous.post("/api/v1/offer-runs/1/cancel").status_code == 401
    assert keyed_client(app, Scope.RUNS_WRITE).post("/api/v1/offer-runs/1/cancel").status_code == 404


def test_the_other_endpoints_are_not_limited(app):
    client = keyed_client(app, Scope.RUNS_READ)
    assert [client.get("/api/v1/offer-runs").status_code for _ in range(5)] == [200] * 5


def test_a_limit_that_is_not_one_stops_start_up_naming_the_variable(app_config):
    with pytest.raises(ConfigError, match="COURIER_RATE_LIMIT_OFFERS='lots' is not a rate limit"):
        create_app({**app_config, "RATE_LIMIT_OFFERS": "lots"})
    with pytest.raises(ConfigError, match="'5/fortnight'"):
        create_app({**app_config, "RATE_LIMIT_OFFERS": "10/minute;5/fortnight"})
    create_app({**app_config, "RATE_LIMIT_OFFERS": "10/minute; 100/5 hours,1000/day"}).extensions["courier"].close()


def test_counters_are_shared_in_redis_when_a_broker_is_configured_and_in_memory_otherwise():
    settings = load_settings({})
    assert storage_url(settings) == "memory://"  # the built-in broker default is not "configured"
    configured = load_settings({"COURIER_CELERY_BROKER_URL": "redis://redis:6379/0"})
    assert storage_url(configured) == "redis://redis:6379/0"
    explicit = load_settings({"COURIER_CELERY_BROKER_URL": "redis://redis:6379/0",
                              "COURIER_RATE_LIMIT_STORAGE_URL": "memory://"})
    assert storage_url(explicit) == "memory://"


def test_unlimited_routes_pay_nothing_for_the_limiter(app):
    keyed_client(app, Scope.RUNS_WRITE).post("/api/v1/offer-runs/1/cancel")  # the limiter is built now
    hooks = [hook for table in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
             for functions in table.values() for hook in functions]
    owners = {type(getattr(hook, "__self__", None)).__module__ for hook in hooks} | {
        type(arg).__module__ for hook in hooks for arg in getattr(hook, "args", ())}
    assert not any(owner.startswith("flask_limiter") for owner in owners), owners


def test_starting_the_app_does_not_import_the_limiter():
    import subprocess
    import sys

    code = ("import sys\nfrom app import create_app\napp = create_app({'DATABASE_URL': 'sqlite://'})\n"
            "app.test_client().get('/healthz')\nprint('flask_limiter' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
