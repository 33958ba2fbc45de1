"""Starting, cancelling and resuming offer runs over REST (blueprints/offer_runs.py).

The coordinator's queue is a recording stand-in here (runs stay ``queued`` unless a test moves
them); the same requests on real Celery workers and PostgreSQL are in
tests/services/offers/runs/test_submitted_on_workers.py.
"""

import io
import os
import time
from datetime import date

import pytest
from sqlalchemy import select

from config import DATA_DIR
from services.auth.api_keys import Scope
from services.offers.runs.errors import DistributedUnavailable
from services.offers.runs.recording import create_run
from services.offers.statuses import RunStatus
from services.tables import OfferRun
from tests.auth_fixtures import keyed_client

SAMPLE = DATA_DIR / "member_data.csv"
HEADER = b"memberId,lastTransactionUtcTs,lastTransactionType,lastTransactionPointsBought,lastTransactionRevenueUSD\n"


class RecordingStarter:
    """The coordinator queue: remembers which runs were queued; ``down`` makes the broker unreachable."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.down = False

    def check(self) -> None:
        if self.down:
            raise DistributedUnavailable("cannot reach the Celery broker at redis://127.0.0.1:1/0 (ConnectionRefused); "
                                         "start Redis or set COURIER_CELERY_BROKER_URL")

    def start_run(self, run_id: int) -> None:
        self.started.append(run_id)


@pytest.fixture
def app_config(app_config, tmp_path):
    return {**app_config, "OFFERS_UPLOAD_DIR": str(tmp_path / "uploads"), "OFFERS_UPLOAD_MAX_BYTES": 300_000}


def record_starts(app) -> RecordingStarter:
    """Make ``app`` start runs as on PostgreSQL with a broker, recording which it starts."""
    recording = RecordingStarter()
    submissions = app.extensions["courier.offers"].submissions
    submissions.database_dialect, submissions.starter_factory = "postgresql", lambda: recording
    return recording


@pytest.fixture
def starter(app):
    """As on PostgreSQL with a broker (the SQLite refusal is tested on its own)."""
    return record_starts(app)


def upload(client, body: bytes = None, query: str = "?as_of=2024-01-05", **headers):
    return client.post(f"/api/v1/offer-runs{query}", data=SAMPLE.read_bytes() if body is None else body,
                       headers={"Content-Type": "text/csv", **headers})


def runs(app):
    with app.extensions["courier"].session() as session:
        return list(session.scalars(select(OfferRun).order_by(OfferRun.id)))


def uploads(tmp_path):
    folder = tmp_path / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_csv_body_is_stored_and_the_run_queued_with_its_location(client, app, starter, tmp_path):
    answer = upload(client, query="?as_of=2024-01-05&chunk_size=200&scoring=per_member")
    assert answer.status_code == 202, answer.get_json()
    run = answer.get_json()
    assert answer.headers["Location"] == f"/api/v1/offer-runs/{run['id']}"
    assert run["status"] == "queued" and run["source"] == "api" and run["mode"] == "distributed"
    assert run["chunk_size"] == 200 and run["as_of"] == "2024-01-05" and run["input_bytes"] == SAMPLE.stat().st_size
    assert run["progress"] == {"phase": "waiting for a coordinator", "chunks_done": 0, "chunks_total": 0,
                               "members_done": 0, "members_to_score": 0,
                               "members_per_s": None, "eta_s": None}
    import hashlib

    sha = hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    assert run["input_sha256"] == sha and uploads(tmp_path) == [f"{sha}.csv"]
    assert starter.started == [run["id"]]
    [stored] = runs(app)
    assert stored.use_batch is False and stored.requested_by is not None
    assert client.get(answer.headers["Location"]).get_json()["status"] == "queued"


def test_a_form_upload_is_taken_from_its_file_part(client, starter):
    answer = client.post("/api/v1/offer-runs", data={"file": (io.BytesIO(SAMPLE.read_bytes()), "members.csv")},
                         content_type="multipart/form-data")
    assert answer.status_code == 202 and starter.started == [answer.get_json()["id"]]
    missing = client.post("/api/v1/offer-runs", data={"other": "x"}, content_type="multipart/form-data")
    assert missing.status_code == 400 and "file" in missing.get_json()["details"]


@pytest.mark.parametrize(("body", "message"), [
    (b"", "empty file"),
    (b"a,b,c\n1,2,3\n", "unexpected header"),
    (HEADER + b"A,2023-01-01 00:00:00,buy,1,1\nB,\xff\xfe,buy,1,1\n", "line 3 is not UTF-8 text"),
    (HEADER + b"A,2023-01-01 00:00:00,buy,1,1\n" + b"x" * 70_000 + b"\n", "line 3 is longer than 65536 bytes"),
    (b"\0" * 100_000, "line 1 is longer than 65536 bytes"),
])
def test_a_bad_file_is_a_400_naming_its_line_and_nothing_is_queued(client, app, starter, tmp_path, body, message):
    answer = upload(client, body)
    assert answer.status_code == 400
    error = answer.get_json()
    assert error["code"] == "invalid_input" and message in error["details"]["file"][0], error
    assert runs(app) == [] and starter.started == [] and uploads(tmp_path) == []


def test_an_upload_over_the_cap_is_a_413_and_nothing_is_kept(client, app, starter, tmp_path):
    body = HEADER + b"A,2023-01-01 00:00:00,buy,1,1\n" * 12_000  # ~350 kB, over the 300 kB cap
    answer = upload(client, body)
    assert answer.status_code == 413 and answer.get_json()["code"] == "payload_too_large"
    assert "COURIER_OFFERS_UPLOAD_MAX_BYTES" in answer.get_json()["error"]
    assert runs(app) == [] and uploads(tmp_path) == []
    # without a Content-Length (chunked): counted as it streams, and refused the same way
    chunked = client.post("/api/v1/offer-runs", input_stream=io.BytesIO(body),
                          headers={"Content-Type": "text/csv", "Transfer-Encoding": "chunked"},
                          environ_overrides={"wsgi.input_terminated": True})  # as gunicorn says of chunked bodies
    assert chunked.status_code == 413 and "COURIER_OFFERS_UPLOAD_MAX_BYTES" in chunked.get_json()["error"]
    assert runs(app) == [] and uploads(tmp_path) == []


@pytest.mark.parametrize("as_form", [False, True], ids=["csv body", "multipart"])
def test_an_upload_may_be_larger_than_any_other_request_body(app_config, as_form):
    from app import create_app

    app = create_app({**app_config, "MAX_CONTENT_LENGTH": 100_000})  # the sample is 212,520 bytes
    recording = record_starts(app)
    client = keyed_client(app, Scope.RUNS_WRITE, Scope.OFFERS_SCORE)
    if as_form:
        answer = client.post("/api/v1/offer-runs?as_of=2024-01-05", content_type="multipart/form-data",
                             data={"file": (io.BytesIO(SAMPLE.read_bytes()), "members.csv")})
    else:
        answer = upload(client)
    assert answer.status_code == 202, answer.get_json()
    assert recording.started == [answer.get_json()["id"]]
    other = client.post("/api/v1/offers", data=b"x" * 100_001, content_type="application/json")
    assert other.status_code == 413  # every other body keeps COURIER_MAX_CONTENT_LENGTH


def test_a_retry_with_the_same_idempotency_key_answers_the_same_run(client, app, starter):
    first = upload(client, **{"Idempotency-Key": "nightly-2024-01-05"})
    again = upload(client, **{"Idempotency-Key": "nightly-2024-01-05"})
    assert first.status_code == again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert len(runs(app)) == 1 and starter.started == [first.get_json()["id"]]
    other_file = upload(client, HEADER + b"A,2023-01-01 00:00:00,buy,1,1\n",
                        **{"Idempotency-Key": "nightly-2024-01-05"})
    assert other_file.status_code == 422 and other_file.get_json()["code"] == "idempotency_key_reused"
    # a key is the client's: another key's client may use the same words for its own run
    other_client = keyed_client(app, Scope.RUNS_WRITE, Scope.RUNS_READ)
    assert upload(other_client, **{"Idempotency-Key": "nightly-2024-01-05"}).get_json()["id"] != first.get_json()["id"]
    assert upload(client, **{"Idempotency-Key": "x" * 201}).status_code == 400


def test_keys_need_runs_write_to_start_cancel_or_resume(app, anonymous, starter):
    reader = keyed_client(app, Scope.RUNS_READ)
    for path in ("/api/v1/offer-runs", "/api/v1/offer-runs/1/cancel", "/api/v1/offer-runs/1/resume"):
        assert anonymous.post(path).status_code == 401
        forbidden = reader.post(path)
        assert forbidden.status_code == 403 and forbidden.get_json()["details"]["required_scope"] == "runs:write"
    writer = keyed_client(app, Scope.RUNS_WRITE)
    created = upload(writer)
    assert created.status_code == 202
    assert writer.get(created.headers["Location"]).status_code == 403  # reading needs runs:read


def test_without_postgresql_or_a_broker_the_answer_is_503_saying_what_to_set(client, app, starter, tmp_path):
    submissions = app.extensions["courier.offers"].submissions
    submissions.database_dialect = "sqlite"
    on_sqlite = upload(client)
    assert on_sqlite.status_code == 503 and on_sqlite.get_json()["code"] == "runs_unavailable"
    assert "COURIER_DATABASE_URL" in on_sqlite.get_json()["error"]
    assert "COURIER_CELERY_BROKER_URL" in on_sqlite.get_json()["error"]  # the default app has neither
    submissions.database_dialect, starter.down = "postgresql", True
    no_broker = upload(client)
    assert no_broker.status_code == 503 and "COURIER_CELERY_BROKER_URL" in no_broker.get_json()["error"]
    assert runs(app) == [] and uploads(tmp_path) == []


def test_the_default_app_refuses_runs_on_sqlite(client):
    answer = upload(client)
    assert answer.status_code == 503 and answer.get_json()["details"] == {"setting": "COURIER_DATABASE_URL"}


def test_an_unknown_partner_is_a_404_before_the_upload_is_read(client, app, starter, tmp_path):
    answer = upload(client, query="?partner=nobody")
    assert answer.status_code == 404 and answer.get_json()["code"] == "partner_not_found"
    assert uploads(tmp_path) == []


def test_options_are_checked_naming_each(client, starter):
    answer = upload(client, query="?scoring=fast&chunk_size=0&as_of=yesterday")
    assert answer.status_code == 400 and set(answer.get_json()["details"]) == {"scoring", "chunk_size", "as_of"}
    assert upload(client, query="").status_code == 202  # as_of defaults to today


def test_cancelling_a_queued_run_ends_it_now_and_again_is_the_same(client, app, starter):
    run_id = upload(client).get_json()["id"]
    cancelled = client.post(f"/api/v1/offer-runs/{run_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "interrupted" and cancelled.get_json()["cancel_requested_at"]
    assert client.post(f"/api/v1/offer-runs/{run_id}/cancel").status_code == 200
    assert client.post("/api/v1/offer-runs/999/cancel").status_code == 404


def test_cancelling_a_running_run_asks_its_coordinator_and_answers_202(client, app, starter):
    run_id = upload(client).get_json()["id"]
    with app.extensions["courier"].session() as session, session.begin():
        run = session.get(OfferRun, run_id)
        run.status, run.heartbeat_at = RunStatus.RUNNING.value, run.started_at  # a live coordinator's beat
        from services.tables import utcnow

        run.heartbeat_at = utcnow()
    answer = client.post(f"/api/v1/offer-runs/{run_id}/cancel")
    assert answer.status_code == 202
    assert answer.get_json()["status"] == "running" and answer.get_json()["cancel_requested_at"]
    from services.offers.runs.coordination import CancelWatch

    assert CancelWatch(app.extensions["courier"].session_factory, run_id, None).asked()


def test_a_run_that_ended_cannot_be_cancelled_and_a_succeeded_one_not_resumed(client, app, starter):
    run_id = upload(client).get_json()["id"]
    with app.extensions["courier"].session() as session, session.begin():
        session.get(OfferRun, run_id).status = RunStatus.SUCCEEDED.value
    for action in ("cancel", "resume"):
        answer = client.post(f"/api/v1/offer-runs/{run_id}/{action}")
        assert answer.status_code == 409 and answer.get_json()["code"] == "run_ended"


def test_resuming_an_interrupted_run_queues_it_again_once(client, app, starter):
    run_id = upload(client).get_json()["id"]
    client.post(f"/api/v1/offer-runs/{run_id}/cancel")
    resumed = client.post(f"/api/v1/offer-runs/{run_id}/resume")
    assert resumed.status_code == 202 and resumed.get_json()["status"] == "queued"
    assert resumed.get_json()["cancel_requested_at"] is None
    again = client.post(f"/api/v1/offer-runs/{run_id}/resume")  # still queued: its task is sent again
    assert again.status_code == 202 and again.get_json()["status"] == "queued"
    assert starter.started == [run_id, run_id, run_id]


def test_a_run_of_the_command_line_is_resumed_there(client, app, starter):
    with app.extensions["courier"].session() as session, session.begin():
        run = create_run(session, partner="reference", input_path="/home/ops/members.csv", input_sha256="0" * 64,
                         as_of=date(2024, 1, 5), concurrency=4)
        run.status, run.mode = RunStatus.INTERRUPTED.value, "distributed"
        run_id = run.id
    answer = client.post(f"/api/v1/offer-runs/{run_id}/resume")
    assert answer.status_code == 409 and answer.get_json()["code"] == "resume_with_cli"
    assert f"--resume {run_id}" in answer.get_json()["error"]


def test_an_input_removed_after_its_retention_cannot_be_resumed(client, app, starter, tmp_path):
    run_id = upload(client).get_json()["id"]
    client.post(f"/api/v1/offer-runs/{run_id}/cancel")
    for path in (tmp_path / "uploads").iterdir():
        path.unlink()
    answer = client.post(f"/api/v1/offer-runs/{run_id}/resume")
    assert answer.status_code == 409 and answer.get_json()["code"] == "input_removed"


def test_retention_removes_old_inputs_no_run_needs(client, app, starter, tmp_path):
    submissions = app.extensions["courier.offers"].submissions
    kept_id = upload(client).get_json()["id"]  # still queued: needed
    ended_id = upload(client, HEADER + b"A,2023-01-01 00:00:00,buy,1,1\n").get_json()["id"]
    client.post(f"/api/v1/offer-runs/{ended_id}/cancel")
    week_ago = time.time() - 8 * 86400
    for path in (tmp_path / "uploads").iterdir():
        os.utime(path, (week_ago, week_ago))
    with app.extensions["courier"].session() as session, session.begin():
        session.get(OfferRun, ended_id).finished_at = session.get(OfferRun, ended_id).finished_at.replace(year=2020)
    removed = submissions.prune()
    assert len(removed) == 1
    with app.extensions["courier"].session() as session:
        assert [p.stem for p in (tmp_path / "uploads").iterdir()] == [session.get(OfferRun, kept_id).input_sha256]


def test_the_runs_list_shows_submitted_runs_with_the_others(client, starter):
    run_id = upload(client).get_json()["id"]
    listed = client.get("/api/v1/offer-runs").get_json()["items"]
    assert [r["id"] for r in listed] == [run_id] and listed[0]["source"] == "api"


@pytest.mark.parametrize("action", ["cancel", "resume"])
def test_an_id_no_database_can_hold_is_a_404(client, starter, action):
    answer = client.post(f"/api/v1/offer-runs/{2**64}/{action}")
    assert answer.status_code == 404 and answer.get_json()["code"] == "run_not_found"
