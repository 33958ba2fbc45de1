"""Per-key rate limits on the costly calls (blueprints/limits.py, the `limits` library)."""

import pytest

from app import create_app
from blueprints.limits import storage_url
from config import ConfigError, load_settings
from services.auth.api_keys import Scope
from tests.auth_fixtures import keyed_client, new_key


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


def limited_app(app_config, storage: str):
    return create_app({**app_config, "RATE_LIMIT_STORAGE_URL": storage, "RATE_LIMIT_RUN_SUBMISSIONS": "2/minute"})


def test_workers_sharing_a_redis_share_each_keys_budget(app_config, tmp_path):
    from tests.distributed_fixtures import MissingComponent, RedisServer

    try:
        redis = RedisServer(tmp_path)
    except MissingComponent as exc:
        pytest.skip(str(exc))
    try:
        first, second = limited_app(app_config, redis.url), limited_app(app_config, redis.url)  # one database
        key = new_key(first, Scope.RUNS_WRITE)
        headers = {"Authorization": f"Bearer {key}"}
        assert first.test_client().post("/api/v1/offer-runs/1/cancel", headers=headers).status_code == 404
        assert second.test_client().post("/api/v1/offer-runs/1/cancel", headers=headers).status_code == 404
        assert first.test_client().post("/api/v1/offer-runs/1/cancel", headers=headers).status_code == 429
        assert second.test_client().post("/api/v1/offer-runs/1/cancel", headers=headers).status_code == 429
    finally:
        redis.close()


def test_an_unreachable_redis_fails_no_request_and_counting_goes_on_in_memory(app_config, caplog):
    app = limited_app(app_config, "redis://127.0.0.1:1/0")  # port 1: connection refused
    client = keyed_client(app, Scope.RUNS_WRITE)
    statuses = [client.post("/api/v1/offer-runs/1/cancel").status_code for _ in range(3)]
    assert statuses == [404, 404, 429]
    warnings = [r for r in caplog.records if r.name == "courier.limits" and r.levelname == "WARNING"]
    assert len(warnings) == 1 and "counting in memory" in warnings[0].getMessage()


def test_redis_is_used_again_once_it_answers(app_config, tmp_path, monkeypatch):
    from tests.distributed_fixtures import MissingComponent, RedisServer

    try:
        redis = RedisServer(tmp_path)
    except MissingComponent as exc:
        pytest.skip(str(exc))
    app = limited_app(app_config, redis.url)
    client = keyed_client(app, Scope.RUNS_WRITE)
    cancel = "/api/v1/offer-runs/1/cancel"
    assert client.post(cancel).status_code == 404  # counted in Redis
    redis.close()
    assert client.post(cancel).status_code == 404  # counted in memory: 1 there
    redis = RedisServer(tmp_path, port=redis.port)  # back, empty
    try:
        monkeypatch.setattr(app.extensions["courier.limits"], "_retry_primary_at", 1.0)  # its retry time has come
        # Redis counts from 0 (memory would refuse the second): 404, 404, then over 2/minute.
        assert [client.post(cancel).status_code for _ in range(3)] == [404, 404, 429]
    finally:
        redis.close()


def test_flask_commands_and_app_start_import_no_limiter():
    """Flask imports every installed `flask.commands` plugin before any command runs (Flask-Limiter's
    cost +80 ms a command); the app imports the counters on the first limited request only."""
    import subprocess
    import sys

    code = ("import sys\nfrom flask.cli import cli\ncli._load_plugin_commands()\n"
            "from app import create_app\napp = create_app({'DATABASE_URL': 'sqlite://'})\n"
            "app.test_client().get('/healthz')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('limits', 'flask_limiter')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
