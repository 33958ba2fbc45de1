"""Distributed runs end to end on real components: Redis, Celery worker processes, PostgreSQL.

Needs COURIER_TEST_POSTGRES_URL (as tests/services/test_postgres.py), ``redis-server`` and the
``distributed`` extra; `.ci/run` provides all three and the tests skip, saying which is missing,
only where they cannot be had. Concurrency is proven with events on the partner, not with timing.
"""

import os
import threading
import time
from datetime import date

import pytest
from sqlalchemy import func, select

from config import DATA_DIR
from services.offers.runs.lifecycle import RunOptions
from services.offers.runs.local import run_offers
from services.tables import OfferRun, OfferRunChunk
from tests.distributed_fixtures import CeleryWorker, app_on_fresh_postgres, worker_settings
from tests.offers_fixtures import fresh_postgres, postgres_in_schema, recorded_results

PG_URL = postgres_in_schema(os.environ.get("COURIER_TEST_POSTGRES_URL"), "distributed_celery")
pytestmark = pytest.mark.skipif(not PG_URL, reason="COURIER_TEST_POSTGRES_URL not set")
pytest.importorskip("celery", reason="the distributed extra is not installed (pip install -e '.[distributed]')")

SAMPLE = str(DATA_DIR / "member_data.csv")
ATS_BATCH = "/ml/ats/predict/batch"


@pytest.fixture(scope="module")
def settings(module_redis, module_partner):
    # a killed worker's chunk comes back after 3 s (chunks here take milliseconds)
    return worker_settings(PG_URL, module_redis, module_partner, CELERY_VISIBILITY_TIMEOUT_S="3",
                           OFFERS_DISTRIBUTED_STALL_S="60")


@pytest.fixture
def pg_app(settings, module_partner):
    app = app_on_fresh_postgres(PG_URL, settings, module_partner)
    yield app
    app.extensions["courier"].close()


@pytest.fixture
def workers(settings, tmp_path):
    started = []

    def start(name):
        worker = CeleryWorker(name, settings, tmp_path / f"{name}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def running_workers(sessions, run_id=None):
    with sessions() as session:
        stmt = select(OfferRunChunk.worker).where(OfferRunChunk.status == "running")
        return set(session.scalars(stmt))


def watch(condition, action, timeout=30):
    """Run ``action`` once ``condition()`` holds (polled from a thread); returns the thread."""
    def loop():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                action()
                return
            time.sleep(0.02)
        action()  # never leave the partner held: the test then fails on its assertions

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def local_results(app, partner):
    sessions = app.extensions["courier"].session_factory
    report = run_offers(sessions, partner.config(batch=True), RunOptions(SAMPLE, "reference", date(2024, 1, 5), 8))
    return recorded_results(sessions, report.run.id)


ARGS = ["run-offers", "--input", SAMPLE, "--as-of", "2024-01-05", "--distributed", "--chunk-size", "100"]


def test_two_worker_processes_score_the_sample_exactly_like_a_local_run(pg_app, module_partner, workers, tmp_path):
    a, b = workers("a"), workers("b")
    sessions = pg_app.extensions["courier"].session_factory
    both_busy = threading.Event()
    # Every partner call waits until both workers hold a chunk at once: two processes in parallel.
    module_partner.fail[ATS_BATCH] = lambda body: both_busy.wait(30) and None
    watcher = watch(lambda: running_workers(sessions) == {a.hostname, b.hostname}, both_busy.set)
    result = pg_app.test_cli_runner().invoke(args=[*ARGS, "--output", str(tmp_path / "out.csv")])
    watcher.join(5)
    assert result.exit_code == 0, result.output
    assert "run 1 succeeded" in result.output and "890 scored, 100 skipped, 0 failed" in result.output
    assert both_busy.is_set()
    module_partner.fail.clear()
    with sessions() as session:
        run = session.get(OfferRun, 1)
        chunks = session.execute(select(OfferRunChunk.worker, OfferRunChunk.attempts)).all()
    assert run.mode == "distributed" and len(chunks) == 9
    assert {worker for worker, _ in chunks} == {a.hostname, b.hostname}
    assert recorded_results(sessions, 1) == local_results(pg_app, module_partner)
    assert (tmp_path / "out.csv").read_text().count("\n") == 991  # header + every member once


def test_a_worker_killed_mid_chunk_loses_and_duplicates_nothing(pg_app, module_partner, workers):
    victim, survivor = workers("victim"), workers("survivor")
    sessions = pg_app.extensions["courier"].session_factory
    released = threading.Event()
    module_partner.fail[ATS_BATCH] = lambda body: released.wait(30) and None

    def kill_then_release():
        victim.kill()  # SIGKILL to the worker and its pool: its chunk is never acknowledged
        released.set()

    watcher = watch(lambda: victim.hostname in running_workers(sessions), kill_then_release)
    result = pg_app.test_cli_runner().invoke(args=ARGS)
    watcher.join(5)
    assert result.exit_code == 0, result.output
    assert "890 scored, 100 skipped, 0 failed (990 recorded)" in result.output
    module_partner.fail.clear()
    with sessions() as session:
        chunks = session.execute(select(OfferRunChunk.chunk_no, OfferRunChunk.worker, OfferRunChunk.attempts,
                                        OfferRunChunk.status)).all()
    assert {status for *_, status in chunks} == {"done"}
    # the victim's chunk was redelivered by the broker and finished by the survivor, on its second attempt
    assert {worker for _, worker, _, _ in chunks} == {survivor.hostname}
    assert max(attempts for _, _, attempts, _ in chunks) == 2
    rows = recorded_results(sessions, 1)
    assert len(rows) == len({r[0] for r in rows}) == 990
    assert rows == local_results(pg_app, module_partner)


def test_with_the_default_ratios_a_killed_workers_chunk_finishes_on_another_worker(settings, module_partner,
                                                                                    tmp_path):
    """Gap: with the defaults (visibility timeout 3,600 s, stall 600 s) a SIGKILLed worker's chunk came
    back after the run had failed ("are workers running?") while the other worker sat idle. The same
    ratios scaled down 10x (visibility 360 s, stall 60 s, claim silent 3 s, heartbeat 0.5 s): the
    claim goes silent, the coordinator queues the chunk again, the survivor finishes it, the run
    succeeds long before either limit."""
    from app import create_app

    fresh_postgres(PG_URL)
    scaled = {**settings, "COURIER_CELERY_VISIBILITY_TIMEOUT_S": "360", "COURIER_OFFERS_DISTRIBUTED_STALL_S": "60",
              "COURIER_OFFERS_CHUNK_SILENT_S": "3", "COURIER_OFFERS_CHUNK_HEARTBEAT_S": "0.5"}
    for key, value in scaled.items():
        os.environ[key] = value  # restored after the test by conftest's autouse fixture
    app = create_app({"ACCESS_LOG": False, "TESTING": True})
    sessions = app.extensions["courier"].session_factory
    victim = CeleryWorker("victim", scaled, tmp_path / "victim.log")
    survivor = CeleryWorker("survivor", scaled, tmp_path / "survivor.log")
    released = threading.Event()
    module_partner.fail[ATS_BATCH] = lambda body: released.wait(30) and None

    def kill_then_release():
        victim.kill()
        released.set()

    try:
        watcher = watch(lambda: victim.hostname in running_workers(sessions), kill_then_release)
        result = app.test_cli_runner().invoke(args=ARGS)
        watcher.join(5)
    finally:
        module_partner.fail.clear()
        victim.close()
        survivor.close()
    assert result.exit_code == 0, result.output
    assert "890 scored, 100 skipped, 0 failed (990 recorded)" in result.output
    assert "its worker victim@courier-test stopped reporting for 3 s (attempt 1): queued again" in result.output
    with sessions() as session:
        chunks = session.execute(select(OfferRunChunk.worker, OfferRunChunk.attempts, OfferRunChunk.status)).all()
    assert {status for *_, status in chunks} == {"done"} and {w for w, _, _ in chunks} == {survivor.hostname}
    assert max(attempts for _, attempts, _ in chunks) == 2
    rows = recorded_results(sessions, 1)
    assert len(rows) == len({r[0] for r in rows}) == 990
    app.extensions["courier"].close()


def test_ctrl_c_on_the_command_interrupts_revokes_pending_chunks_and_resume_finishes(pg_app, module_partner, workers,
                                                                                    settings, tmp_path):
    import signal
    import subprocess
    import sys

    from tests.distributed_fixtures import ROOT

    worker = workers("only")
    sessions = pg_app.extensions["courier"].session_factory
    released = threading.Event()
    module_partner.fail[ATS_BATCH] = lambda body: released.wait(30) and None  # the first chunk stays in flight
    env = {**os.environ, **settings}
    command = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", *ARGS], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def all_queued_one_running():
            with sessions() as session:
                queued = session.scalar(select(func.count()).select_from(OfferRunChunk)
                                        .where(OfferRunChunk.queued_at.is_not(None)))
            return queued == 9 and running_workers(sessions)

        deadline = time.monotonic() + 30
        while not all_queued_one_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        command.send_signal(signal.SIGINT)  # Ctrl-C while a chunk is in flight and eight are queued
        output, _ = command.communicate(timeout=30)
    finally:
        released.set()
        if command.poll() is None:
            command.kill()
    assert command.returncode == 130, output
    assert "run 1 interrupted" in output and "--distributed --resume 1" in output
    # the queued chunks were revoked: the worker discards them without taking them
    deadline = time.monotonic() + 30
    while worker.log_path.read_text().count("Discarding revoked task") < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.log_path.read_text().count("Discarding revoked task") == 8
    with sessions() as session:
        run = session.get(OfferRun, 1)
        taken = session.scalar(select(func.count()).select_from(OfferRunChunk).where(OfferRunChunk.attempts > 0))
    assert run.status == "interrupted"
    assert taken == 1
    # the chunk in flight finished after the interruption: discarded at its commit, not recorded
    assert {status for _, status, *_ in recorded_results(sessions, 1)} == {"skipped"}
    module_partner.fail.clear()
    resumed = pg_app.test_cli_runner().invoke(args=[*ARGS, "--resume", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert "890 scored, 100 skipped, 0 failed (990 recorded)" in resumed.output


def test_refused_with_sqlite_or_without_a_broker(app_config, settings):
    from app import create_app

    sqlite_app = create_app(app_config)
    result = sqlite_app.test_cli_runner().invoke(args=ARGS)
    assert result.exit_code == 2 and "set COURIER_DATABASE_URL to PostgreSQL" in result.output
    nowhere = create_app({**app_config, "DATABASE_URL": PG_URL,
                          "CELERY_BROKER_URL": "redis://:secret@127.0.0.1:1/0"})
    result = nowhere.test_cli_runner().invoke(args=ARGS)
    assert result.exit_code == 2
    assert "cannot reach the Celery broker at redis://:***@127.0.0.1:1/0" in result.output
    assert "set COURIER_CELERY_BROKER_URL" in result.output and "secret" not in result.output


def test_the_coordinator_can_ask_redis_what_it_still_holds(pg_app):
    """What lost-task recovery rests on: queued chunk tasks are counted; an unreachable broker is
    None, answered within seconds (kombu alone would retry it for ever)."""
    import redis as redis_client

    from services.offers.runs.distributed.celery_app import CeleryChunkQueue, CelerySettings, DistributedOffers
    from services.offers.runs.distributed.worker import ChunkJob

    distributed = pg_app.extensions["courier.offers"].distributed
    redis_client.Redis.from_url(distributed.settings.broker_url).flushdb()  # no worker runs in this test
    queue = CeleryChunkQueue(distributed)
    assert queue.held(["x"]) == set()
    ids, other_run = [f"task-{n}" for n in range(3)], "task-of-another-run"
    for chunk_no, task_id in enumerate(ids):
        queue.enqueue(ChunkJob(run_id=99, chunk_no=chunk_no, partner="reference", concurrency=1, use_batch=True,
                               max_consecutive_failures=5), task_id)
    queue.enqueue(ChunkJob(run_id=98, chunk_no=0, partner="reference", concurrency=1, use_batch=True,
                           max_consecutive_failures=5), other_run)
    assert queue.held(ids) == set(ids)  # found by task id: the other run's message is not counted
    assert queue.held(ids[:1]) == {ids[0]} and queue.held([other_run]) == {other_run}
    redis_client.Redis.from_url(distributed.settings.broker_url).flushdb()  # what a restart without persistence does
    assert queue.held(ids) == set()
    nowhere = DistributedOffers(CelerySettings(broker_url="redis://127.0.0.1:1/0", result_backend=None,
                                               visibility_timeout_s=3, chunk_max_attempts=1),
                                context_factory=pg_app.app_context, sessions=None, partner_config=None)
    assert CeleryChunkQueue(nowhere).held(ids) is None
