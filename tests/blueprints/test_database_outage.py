"""With the database down: 503 database_unavailable (never a 500), estimates keep answering."""

import pytest
from sqlalchemy.engine import make_url

ESTIMATE = {"venue_id": "8a61b8c", "time_received": "2017-01-25 03:16:07", "is_retail": True}


@pytest.fixture
def database_down(app, db_url):
    """Make the SQLite file unreachable: a folder where the file was, pooled connections dropped."""
    import os
    import shutil

    path = make_url(db_url).database

    def take_down():
        app.extensions["courier"].engine.dispose()
        shutil.move(path, path + ".away")
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        os.mkdir(path)

    return take_down


def test_requests_needing_the_database_answer_503_database_unavailable(client, database_down, db_url):
    database_down()
    response = client.get("/api/v1/offer-runs")
    assert response.status_code == 503
    body = response.get_json()
    assert body["code"] == "database_unavailable" and response.headers["Retry-After"] == "5"
    assert make_url(db_url).database not in response.get_data(as_text=True)  # no paths, hosts or driver text


def test_readyz_says_the_database_is_down_without_its_address(client, database_down, db_url):
    database_down()
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["details"]["database"] == "unavailable"
    text = response.get_data(as_text=True)
    assert make_url(db_url).database not in text and "sqlite3" not in text


def test_the_estimate_keeps_answering_from_memory(client, seeded_prep_times, database_down, app):
    before = client.post("/api/v1/delivery-estimate", json=ESTIMATE).get_json()
    database_down()
    app.extensions["courier.estimate"].prep_times.invalidate()  # the next request would reload
    after = client.post("/api/v1/delivery-estimate", json=ESTIMATE)
    assert after.status_code == 200 and after.get_json() == before and before["venue_known"] is True


def test_a_cold_worker_answers_503_database_unavailable_not_500(client, seeded_prep_times, database_down, app):
    app.extensions["courier.estimate"].prep_times._snapshot = None  # never loaded in this worker
    database_down()
    response = client.post("/api/v1/delivery-estimate", json=ESTIMATE)
    assert response.status_code == 503
    assert response.get_json() == {"error": "The database is unavailable; retry shortly.",
                                   "code": "database_unavailable", "details": {}, "result": None}


def test_a_worker_warmed_at_start_answers_estimates_through_an_outage(client, seeded_prep_times, database_down, app):
    import runpy
    from pathlib import Path

    app.extensions["courier.estimate"].prep_times._snapshot = None
    hooks = runpy.run_path(str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py"))
    hooks["post_worker_init"](type("Worker", (), {"wsgi": app})())  # what gunicorn calls before traffic
    database_down()
    assert client.post("/api/v1/delivery-estimate", json=ESTIMATE).status_code == 200


def test_a_failed_warm_up_is_reported_not_raised(app, database_down):
    runtime = app.extensions["courier"]
    app.extensions["courier.estimate"].prep_times._snapshot = None
    database_down()
    assert runtime.warm_up() == {"prep_times": "OperationalError"}
