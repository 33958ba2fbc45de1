"""Runs submitted over REST, executed end to end on real components: a coordinator worker on the
``courier.runs`` queue, a chunk worker, Redis, PostgreSQL and the reference partner.

Needs COURIER_TEST_POSTGRES_URL, ``redis-server`` and the ``distributed`` extra (`.ci/run` has all
three); skips saying which is missing. Moments are events on the partner, not elapsed time.
"""

import os
import threading
import time

import pytest
from sqlalchemy import func, select

from config import DATA_DIR
from services.auth.api_keys import Scope
from services.tables import OfferResult, OfferRunChunk
from tests.auth_fixtures import keyed_client
from tests.distributed_fixtures import (
    CeleryWorker,
    app_on_fresh_postgres,
    coordinator_worker,
    worker_settings,
)
from tests.offers_fixtures import postgres_in_schema, recorded_results

PG_URL = postgres_in_schema(os.environ.get("COURIER_TEST_POSTGRES_URL"), "submitted_runs")
pytestmark = pytest.mark.skipif(not PG_URL, reason="COURIER_TEST_POSTGRES_URL not set")
pytest.importorskip("celery", reason="the distributed extra is not installed (pip install -e '.[distributed]')")

SAMPLE = DATA_DIR / "member_data.csv"
ATS_BATCH = "/ml/ats/predict/batch"


@pytest.fixture(scope="module")
def settings(module_redis, module_partner, tmp_path_factory):
    return worker_settings(PG_URL, module_redis, module_partner,
                           OFFERS_UPLOAD_DIR=str(tmp_path_factory.mktemp("uploads")),
                           OFFERS_DISTRIBUTED_STALL_S="60", RATE_LIMIT_RUN_SUBMISSIONS="")


@pytest.fixture
def pg_app(settings, module_partner):
    app = app_on_fresh_postgres(PG_URL, settings, module_partner)
    yield app
    app.extensions["courier"].close()


@pytest.fixture
def workers(settings, tmp_path):
    started = [coordinator_worker(settings, tmp_path / "runs.log"), CeleryWorker("chunks", settings,
                                                                                  tmp_path / "chunks.log")]
    yield started
    for worker in started:
        worker.close()


def wait_for(client, run_id, statuses, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(f"/api/v1/offer-runs/{run_id}").get_json()
        if record["status"] in statuses:
            return record
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still {record['status']}")


def test_a_submitted_run_is_the_same_run_as_the_command_line_one(pg_app, workers, module_partner):
    client = keyed_client(pg_app, Scope.RUNS_WRITE, Scope.RUNS_READ)
    answer = client.post("/api/v1/offer-runs?as_of=2024-01-05&chunk_size=100", data=SAMPLE.read_bytes(),
                         headers={"Content-Type": "text/csv"})
    assert answer.status_code == 202, answer.get_json()
    run = wait_for(client, answer.get_json()["id"], {"succeeded", "failed", "completed_with_failures"})
    assert run["status"] == "succeeded" and run["source"] == "api", run
    assert (run["members_scored"], run["members_skipped"], run["chunks"]["done"]) == (890, 100, 9)
    cli = pg_app.test_cli_runner().invoke(args=["run-offers", "--input", str(SAMPLE), "--as-of", "2024-01-05",
                                                "--distributed", "--chunk-size", "100"])
    assert cli.exit_code == 0, cli.output
    sessions = pg_app.extensions["courier"].session_factory
    assert recorded_results(sessions, run["id"]) == recorded_results(sessions, run["id"] + 1)
    exports = [client.get(f"/api/v1/offer-runs/{n}/export.csv").get_data(as_text=True)
               for n in (run["id"], run["id"] + 1)]
    keep = [0, 9, 10, 11]  # member_id, ats, resp, offer (latencies differ between any two runs)
    rows = [[[line.split(",")[i] for i in keep] for line in export.splitlines()] for export in exports]
    assert rows[0] == rows[1] and len(rows[0]) == 991
    report = client.get(f"/api/v1/offer-runs/{run['id']}/report")
    assert report.status_code == 200 and b"succeeded" in report.data


def test_cancel_stops_the_run_and_resume_finishes_it_with_every_member_once(pg_app, workers, module_partner):
    client = keyed_client(pg_app, Scope.RUNS_WRITE, Scope.RUNS_READ)
    sessions = pg_app.extensions["courier"].session_factory
    scoring, release = threading.Event(), threading.Event()

    def hold(body):  # the first batch call waits: the run is mid-scoring when it is cancelled
        scoring.set()
        release.wait(30)

    module_partner.fail[ATS_BATCH] = hold
    run_id = client.post("/api/v1/offer-runs?as_of=2024-01-05&chunk_size=100", data=SAMPLE.read_bytes(),
                         headers={"Content-Type": "text/csv"}).get_json()["id"]
    assert scoring.wait(30)
    cancelled = client.post(f"/api/v1/offer-runs/{run_id}/cancel")
    assert cancelled.status_code == 202 and cancelled.get_json()["cancel_requested_at"]
    try:  # the coordinator ends the run while a chunk is still in the partner's hands
        run = wait_for(client, run_id, {"interrupted", "succeeded", "failed"})
    finally:
        module_partner.fail.clear()
        release.set()
    assert run["status"] == "interrupted" and run["chunks"]["done"] == 0, run
    assert client.post(f"/api/v1/offer-runs/{run_id}/cancel").status_code == 200  # idempotent
    resumed = client.post(f"/api/v1/offer-runs/{run_id}/resume")
    assert resumed.status_code == 202 and resumed.get_json()["status"] in ("queued", "running")
    run = wait_for(client, run_id, {"succeeded", "failed", "completed_with_failures"})
    assert run["status"] == "succeeded" and run["members_total"] == 990, run
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(OfferResult).where(OfferResult.run_id == run_id)) == 990
        assert session.scalar(select(func.count()).select_from(OfferRunChunk).where(
            OfferRunChunk.run_id == run_id, OfferRunChunk.status == "done")) == 9


def test_progress_is_shown_while_the_run_scores(pg_app, workers, module_partner):
    client = keyed_client(pg_app, Scope.RUNS_WRITE, Scope.RUNS_READ)
    second_chunk, release = threading.Event(), threading.Event()
    calls = []

    def hold(body):  # the first chunk goes through; the second waits until progress was read
        calls.append(1)
        if len(calls) > 1:
            second_chunk.set()
            release.wait(30)

    module_partner.fail[ATS_BATCH] = hold
    run_id = client.post("/api/v1/offer-runs?as_of=2024-01-05&chunk_size=445&scoring=batch",
                         data=SAMPLE.read_bytes(), headers={"Content-Type": "text/csv"}).get_json()["id"]
    try:
        assert second_chunk.wait(30)
        deadline = time.monotonic() + 10
        while (progress := client.get(f"/api/v1/offer-runs/{run_id}").get_json()["progress"])["chunks_done"] < 1:
            assert time.monotonic() < deadline, progress
            time.sleep(0.05)
        assert progress["phase"] == "scoring" and progress["chunks_total"] == 2 and progress["members_to_score"] == 890
        assert progress["members_done"] == 445 and progress["members_per_s"] > 0 and progress["eta_s"] >= 0
    finally:
        module_partner.fail.clear()
        release.set()
    assert wait_for(client, run_id, {"succeeded", "failed"})["status"] == "succeeded"


def test_a_coordinator_asked_to_stop_hands_its_run_back_and_the_next_one_finishes_it(pg_app, settings, tmp_path,
                                                                                      module_partner):
    client = keyed_client(pg_app, Scope.RUNS_WRITE, Scope.RUNS_READ)
    scoring, release = threading.Event(), threading.Event()

    def hold(body):
        scoring.set()
        release.wait(30)

    chunks = CeleryWorker("chunks", settings, tmp_path / "chunks.log")
    first = coordinator_worker(settings, tmp_path / "runs-1.log")
    second = None
    try:
        module_partner.fail[ATS_BATCH] = hold
        run_id = client.post("/api/v1/offer-runs?as_of=2024-01-05&chunk_size=100", data=SAMPLE.read_bytes(),
                             headers={"Content-Type": "text/csv"}).get_json()["id"]
        assert scoring.wait(30)
        first.close()  # SIGTERM: Celery's warm shutdown, as `compose stop` or a deploy sends it
        assert first.process.returncode == 0
        assert client.get(f"/api/v1/offer-runs/{run_id}").get_json()["status"] == "queued"  # back in the queue
        module_partner.fail.clear()
        release.set()
        second = coordinator_worker(settings, tmp_path / "runs-2.log")
        run = wait_for(client, run_id, {"succeeded", "failed", "interrupted"})
        assert run["status"] == "succeeded" and run["members_total"] == 990, run
        assert "handed back" in (tmp_path / "runs-1.log").read_text()
    finally:
        module_partner.fail.clear()
        release.set()
        for worker in (chunks, first, second):
            if worker is not None:
                worker.close()
