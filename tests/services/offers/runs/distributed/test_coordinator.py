"""Distributed runs without a broker: chunking, idempotent chunk writes, and the coordinator driving
in-process workers (threads running the real chunk task body). Runs everywhere (SQLite).

The real thing (Redis, Celery worker processes, PostgreSQL, SIGKILL) is test_celery_workers.py beside it.
"""

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import polars as pl
import pytest
from sqlalchemy import func, select, update

from config import DATA_DIR
from services.offers.runs.distributed.chunks import (
    ChunkStatus,
    ClaimedChunk,
    ClaimRefused,
    Commit,
    beat_claim,
    chunk_progress,
    claim_chunk,
    commit_chunk,
    cut_frames,
    decode_inputs,
    encode_inputs,
    record_attempt_error,
    reopen_for_resume,
    restore_inputs,
    store_chunk,
    take_back_silent_claims,
)
from services.offers.runs.distributed.coordinator import DistributedSettings, run_distributed
from services.offers.runs.distributed.worker import ChunkAttemptFailed, ChunkJob, score_chunk
from services.offers.runs.lifecycle import ResumeError, RunOptions
from services.offers.runs.local import run_offers
from services.offers.runs.recording import MemberOutcome, create_run
from services.offers.statuses import MemberStatus, RunStatus
from services.tables import OfferResult, OfferRun, OfferRunChunk, utcnow
from tests.offers_fixtures import LivePartner, recorded_results

SAMPLE = str(DATA_DIR / "member_data.csv")
AS_OF = date(2024, 1, 5)
ATS_BATCH = "/ml/ats/predict/batch"


class ThreadQueue:
    """A ChunkQueue whose "workers" are threads running the real task body (score_chunk), with
    Celery's retry-on-ChunkAttemptFailed; ``gate`` (an Event) holds every chunk until set."""

    def __init__(self, sessions, partner, *, workers=2, max_attempts=3, gate=None, beat_s=5.0):
        self.sessions, self.partner, self.max_attempts, self.gate = sessions, partner, max_attempts, gate
        self.beat_s = beat_s
        self.pool = ThreadPoolExecutor(workers)
        self.enqueued: list[ChunkJob] = []
        self.revoked: set[str] = set()
        self.started = threading.Semaphore(0)  # released once per chunk a worker takes
        self.in_flight: set[str] = set()  # what a broker holds: queued, or delivered and not acknowledged

    def check(self):
        pass

    def held(self, task_ids):
        return set(task_ids) & self.in_flight

    def diagnose(self):
        return None

    def enqueue(self, job, task_id):
        self.enqueued.append(job)
        self.in_flight.add(task_id)
        self.pool.submit(self._work, task_id, job).add_done_callback(lambda _: self.in_flight.discard(task_id))
        return task_id

    def _work(self, task_id, job):
        self.started.release()
        if self.gate is not None:
            self.gate.wait(30)
        while task_id not in self.revoked:
            try:
                return score_chunk(self.sessions, self.partner, job, worker="thread", max_attempts=self.max_attempts,
                                   beat_s=self.beat_s)
            except ChunkAttemptFailed:
                continue

    def revoke(self, task_ids):
        self.revoked.update(task_ids)

    def close(self):
        self.pool.shutdown(wait=True)


@pytest.fixture
def sessions(app):
    return app.extensions["courier"].session_factory


def options(**kw):
    return RunOptions(**{"input_path": SAMPLE, "partner": "reference", "as_of": AS_OF, "concurrency": 8, **kw})


def new_run(session):
    return create_run(session, partner="reference", input_path="x.csv", input_sha256="0" * 64, as_of=AS_OF,
                      concurrency=1)


# --- chunking and idempotent writes -------------------------------------------------------------------

def test_chunks_are_cut_in_order_across_partitions_and_the_last_one_is_short():
    partitions = [pl.DataFrame({"member_id": [str(i) for i in span]}) for span in (range(0, 3), range(3, 11),
                                                                                    range(11, 12))]
    chunks = [(n, c["member_id"].to_list()) for n, c in cut_frames(partitions, 5)]
    assert chunks == [(0, ["0", "1", "2", "3", "4"]), (1, ["5", "6", "7", "8", "9"]), (2, ["10", "11"])]
    # the same input cuts the same way (resume relies on it)
    assert [(n, c["member_id"].to_list()) for n, c in cut_frames(partitions, 5)] == chunks
    assert list(cut_frames([], 5)) == [] and list(cut_frames([pl.DataFrame({"member_id": []})], 5)) == []


def test_chunk_inputs_keep_their_values_types_and_nulls():
    members = pl.DataFrame({"member_id": ["a", "b"], "AVG_REVENUE_USD": [1.5, None],
                            "DAYS_SINCE_LAST_TRANSACTION": [3, 0]})
    assert decode_inputs(encode_inputs(members)) == [
        {"member_id": "a", "AVG_REVENUE_USD": 1.5, "DAYS_SINCE_LAST_TRANSACTION": 3},
        {"member_id": "b", "AVG_REVENUE_USD": None, "DAYS_SINCE_LAST_TRANSACTION": 0}]


def test_a_chunk_spanning_partitions_with_a_feature_null_in_one_of_them_is_one_frame():
    first = pl.DataFrame({"member_id": ["a"], "AVG_REVENUE_USD": [None]})  # the Null type there
    second = pl.DataFrame({"member_id": ["b"], "AVG_REVENUE_USD": [2.0]})
    [(_, chunk)] = list(cut_frames([first, second], 5))
    assert chunk.to_dicts() == [{"member_id": "a", "AVG_REVENUE_USD": None}, {"member_id": "b", "AVG_REVENUE_USD": 2.0}]


def outcome(member_id, status=MemberStatus.SCORED):
    return MemberOutcome(member_id=member_id, status=status, offer="OFFER_1" if status == "scored" else None)


def test_a_chunk_committed_twice_is_recorded_once(db_session):
    run = new_run(db_session)
    store_chunk(db_session, run.id, 0, pl.DataFrame([{"member_id": "a"}, {"member_id": "b"}]))
    claimed = claim_chunk(db_session, run.id, 0, "w1", max_attempts=3)
    assert isinstance(claimed, ClaimedChunk) and claimed.attempt == 1
    assert commit_chunk(db_session, run.id, 0, [outcome("a"), outcome("b")], {"members": 2, "failed": 0}) \
        is Commit.COMMITTED
    # the broker delivered the chunk again (its worker died before acknowledging): nothing more is written
    assert claim_chunk(db_session, run.id, 0, "w2", max_attempts=3) is ClaimRefused.DONE
    assert commit_chunk(db_session, run.id, 0, [outcome("a"), outcome("b")], {"members": 2, "failed": 0}) \
        is Commit.DUPLICATE
    db_session.commit()
    assert db_session.scalar(select(func.count()).select_from(OfferResult).where(OfferResult.run_id == run.id)) == 2
    chunk = db_session.get(OfferRunChunk, (run.id, 0))
    assert chunk.status == ChunkStatus.DONE and chunk.stats["record_s"] >= 0


def test_a_chunk_scored_again_by_a_resume_replaces_its_members_results(db_session):
    run = new_run(db_session)
    store_chunk(db_session, run.id, 0, pl.DataFrame([{"member_id": "a"}, {"member_id": "b"}]))
    claim_chunk(db_session, run.id, 0, "w1", max_attempts=3)
    assert commit_chunk(db_session, run.id, 0, [outcome("a"), outcome("b", MemberStatus.FAILED)],
                        {"members": 2, "failed": 1}) is Commit.COMMITTED
    assert reopen_for_resume(db_session, run.id) == [0]
    restore_inputs(db_session, run.id, 0, pl.DataFrame([{"member_id": "a"}, {"member_id": "b"}]))
    claim_chunk(db_session, run.id, 0, "w2", max_attempts=3)
    assert commit_chunk(db_session, run.id, 0, [outcome("a"), outcome("b")], {"members": 2, "failed": 0}) \
        is Commit.COMMITTED
    db_session.commit()
    assert dict(db_session.execute(select(OfferResult.member_id, OfferResult.status)
                                   .where(OfferResult.run_id == run.id)).all()) == {"a": "scored", "b": "scored"}


def test_a_chunk_is_finished_once_its_results_are_written(db_session, monkeypatch):
    """Gap: finished_at was set before the result rows were inserted (its time left out recording)."""
    from datetime import UTC, datetime

    from services.offers.runs.distributed import chunks

    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    monkeypatch.setattr(chunks, "utcnow", lambda: clock[0])
    real_insert = chunks.insert_outcomes

    def insert_taking_five_seconds(*args):
        real_insert(*args)
        clock[0] += timedelta(seconds=5)

    monkeypatch.setattr(chunks, "insert_outcomes", insert_taking_five_seconds)
    run = new_run(db_session)
    store_chunk(db_session, run.id, 0, pl.DataFrame([{"member_id": "a"}]))
    claim_chunk(db_session, run.id, 0, "w1", max_attempts=3)
    assert commit_chunk(db_session, run.id, 0, [outcome("a")], {"members": 1, "failed": 0}) is Commit.COMMITTED
    db_session.commit()
    chunk = db_session.get(OfferRunChunk, (run.id, 0))
    assert _aware(chunk.finished_at) == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)


def test_a_chunk_is_not_committed_after_its_run_stopped_and_is_pending_again(db_session):
    run = new_run(db_session)
    store_chunk(db_session, run.id, 0, pl.DataFrame([{"member_id": "a"}]))
    claim_chunk(db_session, run.id, 0, "w1", max_attempts=3)
    run.status = RunStatus.INTERRUPTED.value
    db_session.flush()
    assert commit_chunk(db_session, run.id, 0, [outcome("a")], {"members": 1, "failed": 0}) is Commit.RUN_STOPPED
    chunk = db_session.get(OfferRunChunk, (run.id, 0))
    assert chunk.status == ChunkStatus.PENDING and "the run stopped" in chunk.error  # not `running` for ever
    assert claim_chunk(db_session, run.id, 0, "w1", max_attempts=3) is ClaimRefused.RUN_NOT_RUNNING
    assert db_session.scalar(select(func.count()).select_from(OfferResult)) == 0


def test_attempts_are_counted_when_claimed_and_bounded(db_session):
    run = new_run(db_session)
    store_chunk(db_session, run.id, 0, pl.DataFrame([{"member_id": "a"}]))
    assert isinstance(claim_chunk(db_session, run.id, 0, "w1", max_attempts=2), ClaimedChunk)
    assert record_attempt_error(db_session, run.id, 0, "partner down", max_attempts=2) is True  # retry
    assert isinstance(claim_chunk(db_session, run.id, 0, "w1", max_attempts=2), ClaimedChunk)
    # the second worker died mid-chunk (no error recorded); the redelivered copy finds no attempt left
    assert claim_chunk(db_session, run.id, 0, "w2", max_attempts=2) is ClaimRefused.NO_ATTEMPTS_LEFT
    chunk = db_session.get(OfferRunChunk, (run.id, 0))
    assert chunk.status == ChunkStatus.FAILED and chunk.error.startswith("gave up after 2 attempts")
    progress = chunk_progress(db_session, run.id)
    assert progress.failed == 1 and progress.first_failure[0] == 0


def test_chunk_inputs_are_dropped_when_done_and_a_copy_without_them_is_refused(db_session):
    """Gap: chunk inputs were never deleted (~50 MB after ~30 runs). A done chunk keeps none; a stale
    copy claimed before a resume restored a chunk's rows is refused instead of recording no one."""
    from services.offers.runs.distributed.chunks import drop_inputs

    run = new_run(db_session)
    store_chunk(db_session, run.id, 0, pl.DataFrame([{"member_id": "a"}]))
    store_chunk(db_session, run.id, 1, pl.DataFrame([{"member_id": "b"}]))
    claim_chunk(db_session, run.id, 0, "w1", max_attempts=3)
    assert commit_chunk(db_session, run.id, 0, [outcome("a")], {"members": 1, "failed": 0}) is Commit.COMMITTED
    db_session.expire_all()
    assert db_session.get(OfferRunChunk, (run.id, 0)).inputs is None
    drop_inputs(db_session, run.id)  # the run ended (interrupted) with chunk 1 pending
    db_session.expire_all()
    assert claim_chunk(db_session, run.id, 1, "stale", max_attempts=3) is ClaimRefused.NO_INPUTS
    restore_inputs(db_session, run.id, 1, pl.DataFrame([{"member_id": "b"}]))  # the resume puts them back, then sends
    claimed = claim_chunk(db_session, run.id, 1, "w2", max_attempts=3)
    assert isinstance(claimed, ClaimedChunk) and claimed.rows == [{"member_id": "b"}]


def test_resume_reopens_unfinished_chunks_and_chunks_with_failed_members(db_session):
    run = new_run(db_session)
    for n in range(4):
        store_chunk(db_session, run.id, n, pl.DataFrame([{"member_id": f"m{n}"}]))
    for n, failed in ((0, 0), (1, 1)):
        claim_chunk(db_session, run.id, n, "w", max_attempts=3)
        status = MemberStatus.FAILED if failed else MemberStatus.SCORED
        commit_chunk(db_session, run.id, n, [outcome(f"m{n}", status)], {"members": 1, "failed": failed})
    claim_chunk(db_session, run.id, 2, "w", max_attempts=3)  # its worker died: still "running"
    assert reopen_for_resume(db_session, run.id) == [1, 2, 3]
    assert {c.chunk_no: (c.status, c.attempts) for c in db_session.scalars(select(OfferRunChunk))} == {
        0: ("done", 1), 1: ("pending", 0), 2: ("pending", 0), 3: ("pending", 0)}
    # scoring chunk 1 again replaces its member's result instead of adding one
    claim_chunk(db_session, run.id, 1, "w", max_attempts=3)
    assert commit_chunk(db_session, run.id, 1, [outcome("m1")], {"members": 1, "failed": 0})
    assert db_session.execute(select(OfferResult.member_id, OfferResult.status).order_by(OfferResult.member_id)
                              ).all() == [("m0", "scored"), ("m1", "scored")]


# --- the coordinator with in-process workers -------------------------------------------------------

def test_a_distributed_run_records_exactly_what_a_local_run_records(app, sessions, module_partner):
    config = module_partner.config(batch=True)
    queue = ThreadQueue(sessions, config)
    lines = []
    totals, advanced = [], []
    report = run_distributed(sessions, config, options(), queue, DistributedSettings(chunk_size=100, stall_s=60),
                             progress_start=totals.append, progress=advanced.append, note=lines.append)
    queue.close()
    local = run_offers(sessions, config, options())
    run = report.run
    assert (run.status, run.mode, run.chunk_size) == ("succeeded", "distributed", 100)
    assert (run.members_scored, run.members_skipped, run.rows_rejected) == (890, 100, 10)
    assert recorded_results(sessions, run.id) == recorded_results(sessions, local.run.id)
    assert run.offers == local.run.offers
    assert len(queue.enqueued) == 9 and totals == [990] and sum(advanced) == 990
    assert run.step_metrics["ats"]["items"] == 890 and "p99_ms" in run.step_metrics["ats"]
    assert run.timeline[-1][1] == 990
    assert "queued 9 chunk(s)" in lines[0]
    from services.offers.reports.html import run_report_html

    with sessions() as session:
        assert '<dd id="mode">distributed (chunks of 100)</dd>' in run_report_html(session, run.id)


def test_ctrl_c_revokes_pending_chunks_and_resume_sends_only_unfinished_ones(app, sessions, module_partner):
    config = module_partner.config(batch=True)
    gate = threading.Event()
    stop = threading.Event()

    class CtrlCAfterTheFirstChunk(ThreadQueue):
        def enqueue(self, job, task_id):
            super().enqueue(job, task_id)
            stop.set()  # Ctrl-C as soon as the first chunk is queued

    queue = CtrlCAfterTheFirstChunk(sessions, config, workers=1, gate=gate)
    finished = {}
    thread = threading.Thread(target=lambda: finished.update(report=run_distributed(
        sessions, config, options(), queue, DistributedSettings(chunk_size=100, stall_s=60), stop=stop)))
    thread.start()
    thread.join(30)
    gate.set()
    queue.close()
    run = finished["report"].run
    assert run.status == RunStatus.INTERRUPTED
    with sessions() as session:
        chunks = dict(session.execute(select(OfferRunChunk.chunk_no, OfferRunChunk.status)
                                      .where(OfferRunChunk.run_id == run.id)).all())
    assert set(chunks.values()) == {"pending"}  # nothing was scored after the interruption
    assert queue.revoked  # the queued tasks were revoked

    resumed_queue = ThreadQueue(sessions, config)
    report = run_distributed(sessions, config, options(resume_run_id=run.id), resumed_queue,
                             DistributedSettings(chunk_size=100, stall_s=60))
    resumed_queue.close()
    assert report.run.status == RunStatus.SUCCEEDED and report.run.members_total == 990
    # the chunk queued before the interruption, then the ones it never got to
    assert sorted(j.chunk_no for j in resumed_queue.enqueued) == sorted(chunks) + list(range(len(chunks), 9))
    # resuming a finished chunk set sends nothing again
    with pytest.raises(ResumeError, match="already succeeded"):
        run_distributed(sessions, config, options(resume_run_id=run.id), ThreadQueue(sessions, config),
                        DistributedSettings(chunk_size=100, stall_s=60))


def test_a_stop_before_any_chunk_is_stored_interrupts_the_run_not_succeeds_it(app, sessions, module_partner):
    """Found under load: a stop that came before the first chunk was stored left no chunk to follow,
    and "every stored chunk done" (0 of 0) ended the run `succeeded` with nobody scored."""
    config = module_partner.config(batch=True)
    stop = threading.Event()
    queue = ThreadQueue(sessions, config)
    report = run_distributed(sessions, config, options(), queue, DistributedSettings(chunk_size=100, stall_s=60),
                             progress_start=lambda _total: stop.set(), stop=stop)
    queue.close()
    assert report.run.status == RunStatus.INTERRUPTED and queue.enqueued == []


def test_only_unfinished_chunks_are_sent_again(app, sessions, module_partner):
    config = module_partner.config(batch=True)
    queue = ThreadQueue(sessions, config)
    report = run_distributed(sessions, config, options(), queue, DistributedSettings(chunk_size=300, stall_s=60))
    queue.close()
    with sessions() as session, session.begin():  # as if chunk 1's worker was lost and the run abandoned
        session.get(OfferRunChunk, (report.run.id, 1)).status = ChunkStatus.RUNNING.value
        run = session.get(OfferRun, report.run.id)
        run.status, run.lease_owner = RunStatus.INTERRUPTED.value, None
    again = ThreadQueue(sessions, config)
    resumed = run_distributed(sessions, config, options(resume_run_id=report.run.id), again,
                              DistributedSettings(chunk_size=5000, stall_s=60))  # the run keeps its size
    again.close()
    assert [j.chunk_no for j in again.enqueued] == [1]
    assert resumed.run.status == RunStatus.SUCCEEDED and resumed.run.members_total == 990
    local = run_offers(sessions, config, options())
    assert recorded_results(sessions, report.run.id) == recorded_results(sessions, local.run.id)


def test_a_run_whose_chunks_keep_failing_ends_failed_with_the_reason(app, sessions):
    down = LivePartner(fail={"/ml/ats/predict/batch": lambda body: 500})
    try:
        config = down.config(batch=True)
        queue = ThreadQueue(sessions, config, max_attempts=2)
        report = run_distributed(sessions, config, options(max_consecutive_failures=5), queue,
                                 DistributedSettings(chunk_size=500, stall_s=60))
        queue.close()
    finally:
        down.close()
    run = report.run
    assert run.status == RunStatus.FAILED
    # both chunks fail; whichever used up its attempts first is the one named
    failed = re.match(r"chunk (\d) failed: attempt 2/2: stopped after 5 consecutive member failures", run.error)
    assert failed, run.error
    with sessions() as session:
        assert session.get(OfferRunChunk, (run.id, int(failed.group(1)))).attempts == 2


def test_no_worker_means_failed_after_the_stall_time_not_a_hang(app, sessions, module_partner):
    class NoWorkers:
        revoked: list = []
        enqueued: list = []
        sent: list = []

        def check(self):
            pass

        def held(self, task_ids):
            return set(task_ids)  # all of them, waiting in the broker

        def diagnose(self):
            return None

        def enqueue(self, job, task_id):
            self.enqueued.append(job)
            self.sent.append(task_id)

        def revoke(self, task_ids):
            self.revoked.extend(task_ids)

    queue = NoWorkers()
    report = run_distributed(sessions, module_partner.config(batch=True), options(), queue,
                             DistributedSettings(chunk_size=500, stall_s=0.5))
    assert report.run.status == RunStatus.FAILED
    assert "no chunk started or finished in 0.5 s (0/2 done); are workers running?" in report.run.error
    assert sorted(queue.revoked) == sorted(queue.sent) and len(queue.sent) == 2  # both chunks' tasks


class ForgetfulBroker(ThreadQueue):
    """Loses every task sent before ``restarted`` is set, as a Redis restarted without persistence
    forgets its queue; ``held()`` None while ``down`` is set (unreachable)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.restarted, self.down = threading.Event(), threading.Event()
        self.lost: list[int] = []

    def held(self, task_ids):
        if self.down.is_set():
            return None
        self.restarted.set()  # asked after the restart: it holds what was sent since
        return super().held(task_ids)

    def enqueue(self, job, task_id):
        if self.restarted.is_set():
            return super().enqueue(job, task_id)
        self.lost.append(job.chunk_no)
        self.enqueued.append(job)
        return None


def test_chunks_a_restarted_broker_forgot_are_queued_again_and_recorded_once(app, sessions, module_partner):
    config = module_partner.config(batch=True)
    queue, lines = ForgetfulBroker(sessions, config), []
    report = run_distributed(sessions, config, options(), queue,
                             DistributedSettings(chunk_size=100, stall_s=60, lost_after_s=0.2), note=lines.append)
    queue.close()
    assert report.run.status == "succeeded" and report.run.members_scored == 890
    assert queue.lost == list(range(9)) and [j.chunk_no for j in queue.enqueued[9:]] == list(range(9))
    assert lines[1] == ("  the broker held none of the tasks of 9 waiting chunk(s) (restarted without "
                        "persistence?): queued them again")
    local = run_offers(sessions, config, options())
    assert recorded_results(sessions, report.run.id) == recorded_results(sessions, local.run.id)


def test_a_stale_message_of_another_run_does_not_hide_this_runs_lost_chunks(app, sessions, module_partner):
    """Gap: the lost-queue check counted every message the broker held; one stale unacknowledged
    message of an earlier run kept this run's lost chunks from being queued again."""
    config = module_partner.config(batch=True)
    queue, lines = ForgetfulBroker(sessions, config), []
    queue.in_flight.add("a-task-of-an-earlier-run")  # delivered long ago, never acknowledged
    report = run_distributed(sessions, config, options(), queue,
                             DistributedSettings(chunk_size=100, stall_s=60, lost_after_s=0.2), note=lines.append)
    queue.close()
    assert report.run.status == "succeeded" and report.run.members_scored == 890
    assert [j.chunk_no for j in queue.enqueued[9:]] == list(range(9))


def test_an_unreachable_broker_is_said_once_and_the_run_fails_at_the_stall_time(app, sessions, module_partner):
    config = module_partner.config(batch=True)
    queue, lines = ForgetfulBroker(sessions, config), []
    queue.down.set()
    report = run_distributed(sessions, config, options(), queue,
                             DistributedSettings(chunk_size=500, stall_s=0.6, lost_after_s=0.1), note=lines.append)
    queue.close()
    assert report.run.status == RunStatus.FAILED and "no chunk started or finished in 0.6 s" in report.run.error
    assert sum("the Celery broker cannot be reached" in line for line in lines) == 1
    assert len(queue.enqueued) == 2  # nothing queued again while the broker could not say what it holds


def test_rest_shows_a_running_runs_counts_so_far_and_its_chunks(client, sessions, module_partner):
    """Gap: GET /api/v1/offer-runs/<id> showed members_scored 0 until the end. One worker, chunks of
    100: the third chunk's partner call waits (an event) while the test reads the run."""
    config = module_partner.config(batch=True)
    calls, third_call, release, all_queued = [], threading.Event(), threading.Event(), threading.Event()

    def hold_the_third_chunk(body):
        calls.append(1)
        if len(calls) == 3:
            third_call.set()
            release.wait(30)

    module_partner.fail[ATS_BATCH] = hold_the_third_chunk
    queue = ThreadQueue(sessions, config, workers=1)
    with ThreadPoolExecutor(1) as coordinator:
        running = coordinator.submit(run_distributed, sessions, config, options(), queue,
                                     DistributedSettings(chunk_size=100, stall_s=60),
                                     note=lambda line: line.startswith("  queued") and all_queued.set())
        try:
            assert third_call.wait(30) and all_queued.wait(30)  # every chunk stored, the third one in hand
            with sessions() as session:
                run_id = session.scalar(select(func.max(OfferRun.id)))
                scored = session.scalar(select(func.count()).select_from(OfferResult).where(
                    OfferResult.run_id == run_id, OfferResult.status == "scored"))
            during = client.get(f"/api/v1/offer-runs/{run_id}").get_json()
            listed = client.get("/api/v1/offer-runs").get_json()["items"][0]
        finally:
            release.set()
        report = running.result(60)
    queue.close()
    module_partner.fail.clear()
    assert during["status"] == "running" and (during["mode"], during["chunk_size"]) == ("distributed", 100)
    assert scored == 200 and during["members_scored"] == 200  # two chunks of 100 scoreable members
    assert during["members_skipped"] == 100 and during["members_total"] == 300  # written before the chunks
    assert sum(during["offers"].values()) == 200
    assert during["chunks"] == {"total": 9, "done": 2, "running": 1, "pending": 6, "failed": 0}
    assert listed["id"] == run_id and listed["members_scored"] == 200
    after = client.get(f"/api/v1/offer-runs/{run_id}").get_json()
    assert report.run.status == "succeeded" and after["members_scored"] == 890
    assert after["chunks"] == {"total": 9, "done": 9, "running": 0, "pending": 0, "failed": 0}


# --- claims that go silent (a worker killed, an attempt that ended without a word) -------------------

def test_a_silent_claim_is_taken_back_and_a_beating_one_is_not(db_session):
    run = new_run(db_session)
    for chunk_no in (0, 1):
        store_chunk(db_session, run.id, chunk_no, pl.DataFrame([{"member_id": str(chunk_no)}]))
        claim_chunk(db_session, run.id, chunk_no, f"w{chunk_no}", max_attempts=3)
    db_session.execute(update(OfferRunChunk).where(OfferRunChunk.chunk_no == 0)
                       .values(heartbeat_at=utcnow() - timedelta(seconds=31)))
    assert beat_claim(db_session, run.id, 1, attempt=1)  # w1 is alive
    assert take_back_silent_claims(db_session, run.id, silent_s=30) == [(0, 1, "w0")]
    chunk = db_session.get(OfferRunChunk, (run.id, 0))
    assert chunk.status == ChunkStatus.PENDING and "its worker (w0) stopped reporting for more than 30 s" in chunk.error
    assert not beat_claim(db_session, run.id, 0, attempt=1)  # w0, if it was only paused, learns it lost the chunk
    assert db_session.get(OfferRunChunk, (run.id, 1)).status == ChunkStatus.RUNNING


class DyingWorkers(ThreadQueue):
    """The first delivery of chunk 0 is claimed by a worker that then dies: it never beats, never
    records anything, and its message stays unacknowledged in the broker (whose visibility timeout,
    an hour by default, never comes in this test)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.died = False

    def _work(self, task_id, job):
        if job.chunk_no == 0 and not self.died:
            self.died = True
            with self.sessions() as session, session.begin():
                claim_chunk(session, job.run_id, 0, "doomed", max_attempts=self.max_attempts)
            return None  # SIGKILL: no beat, no error, no acknowledgement
        return super()._work(task_id, job)


def test_a_chunk_whose_worker_died_is_queued_again_long_before_the_stall_time(app, sessions, module_partner):
    """Gap: a SIGKILLed worker's chunk came back only after the broker's visibility timeout (3,600 s
    by default), after the stall time (600 s): the run failed while healthy workers sat idle. With
    the defaults' ratio (silent 30 s : stall 600 s), scaled down: silent 0.5 s, stall 10 s."""
    config = module_partner.config(batch=True)
    queue, lines = DyingWorkers(sessions, config, beat_s=0.1), []
    report = run_distributed(sessions, config, options(), queue,
                             DistributedSettings(chunk_size=100, stall_s=10, silent_s=0.5), note=lines.append)
    queue.close()
    assert report.run.status == RunStatus.SUCCEEDED and report.run.members_scored == 890
    assert [j.chunk_no for j in queue.enqueued].count(0) == 2
    assert any(line.startswith("  chunk 0: its worker doomed stopped reporting for 0.5 s (attempt 1)")
               for line in lines), lines
    with sessions() as session:
        chunk = session.get(OfferRunChunk, (report.run.id, 0))
        assert (chunk.status, chunk.attempts, chunk.worker) == ("done", 2, "thread")
    local = run_offers(sessions, config, options())
    assert recorded_results(sessions, report.run.id) == recorded_results(sessions, local.run.id)


def test_an_attempt_that_failed_while_recording_its_error_is_not_left_running(app, sessions, module_partner,
                                                                                monkeypatch):
    """Gap: an attempt whose failure could not be recorded (the database refused) left its chunk
    `running` with no message anywhere (Celery acknowledged the task's failure). Its beats end with
    the attempt, so the coordinator takes the chunk back and another attempt finishes it."""
    from services.offers.runs.distributed import worker as chunk_worker

    config = module_partner.config(batch=True)
    failures = []

    def commit_fails_once(session, run_id, chunk_no, *args):
        if chunk_no == 0 and not failures:
            failures.append("commit")
            raise RuntimeError("database refused the commit")
        return commit_chunk(session, run_id, chunk_no, *args)

    def recording_fails_once(*args, **kwargs):
        if len(failures) == 1:
            failures.append("record")
            raise RuntimeError("database refused the error too")
        return record_attempt_error(*args, **kwargs)

    monkeypatch.setattr(chunk_worker, "commit_chunk", commit_fails_once)
    monkeypatch.setattr(chunk_worker, "record_attempt_error", recording_fails_once)
    queue, lines = ThreadQueue(sessions, config, beat_s=0.1), []
    report = run_distributed(sessions, config, options(), queue,
                             DistributedSettings(chunk_size=100, stall_s=10, silent_s=0.5), note=lines.append)
    queue.close()
    assert failures == ["commit", "record"]
    assert report.run.status == RunStatus.SUCCEEDED and report.run.members_scored == 890
    assert any("chunk 0: its worker thread stopped reporting" in line for line in lines), lines


def test_a_chunk_slower_than_the_silence_limit_keeps_its_claim_while_it_beats(app, sessions, module_partner,
                                                                             monkeypatch):
    """The partner holds chunk 0's scoring until the coordinator has checked the claims three times
    with the claim older than the silence limit: beats keep it, so it is never queued twice."""
    from services.offers.runs.distributed import coordinator as distributed

    config = module_partner.config(batch=True)
    checked_late, release = [], threading.Event()

    def counting(session, run_id, silent_s):
        claim = session.scalar(select(OfferRunChunk.started_at).where(OfferRunChunk.run_id == run_id,
                                                                      OfferRunChunk.chunk_no == 0))
        if claim is not None and utcnow() - _aware(claim) > timedelta(seconds=silent_s):
            checked_late.append(1)
            if len(checked_late) >= 3:
                release.set()
        return take_back_silent_claims(session, run_id, silent_s)

    monkeypatch.setattr(distributed, "take_back_silent_claims", counting)
    monkeypatch.setattr(distributed, "SILENT_CHECK_S", 0.05)
    module_partner.fail[ATS_BATCH] = lambda body: release.wait(30) and None
    queue = ThreadQueue(sessions, config, workers=1, beat_s=0.05)
    report = run_distributed(sessions, config, options(), queue,
                             DistributedSettings(chunk_size=500, stall_s=30, silent_s=0.3))
    queue.close()
    module_partner.fail.clear()
    assert release.is_set() and report.run.status == RunStatus.SUCCEEDED
    assert [j.chunk_no for j in queue.enqueued] == [0, 1]  # nothing queued twice
    with sessions() as session:
        assert session.scalar(select(func.max(OfferRunChunk.attempts))) == 1


def _aware(stamp):
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=utcnow().tzinfo)


def test_local_and_distributed_runs_resume_only_in_their_own_mode(app, sessions, module_partner):
    config = module_partner.config(batch=True)
    local = run_offers(sessions, config, options())
    with sessions() as session, session.begin():
        session.get(OfferRun, local.run.id).status = RunStatus.INTERRUPTED.value
    with pytest.raises(ResumeError, match="is a local run; resume it without --distributed"):
        run_distributed(sessions, config, options(resume_run_id=local.run.id), ThreadQueue(sessions, config),
                        DistributedSettings(chunk_size=100, stall_s=60))


def test_the_command_refuses_sqlite_and_a_chunk_size_without_distributed(runner):
    result = runner.invoke(args=["run-offers", "--input", SAMPLE, "--distributed"])
    assert result.exit_code == 2
    assert "--distributed needs a database every worker shares: set COURIER_DATABASE_URL to PostgreSQL" in result.output
    result = runner.invoke(args=["run-offers", "--input", SAMPLE, "--chunk-size", "10"])
    assert result.exit_code == 2 and "--chunk-size applies to --distributed runs only" in result.output


# --- the coordinator's skipped-members writer ---------------------------------------------------------

def test_skipped_members_are_written_beside_the_hand_out_and_a_failed_write_reaches_the_coordinator():
    from services.offers.runs.distributed.coordinator import _SkippedWriter

    written, release = [], threading.Event()

    def write(batch):
        release.wait(5)
        if batch[0].member_id == "bad":
            raise RuntimeError("database gone")
        written.append([o.member_id for o in batch])

    writer = _SkippedWriter(write)
    skipped = [outcome("a", MemberStatus.SKIPPED)]
    writer.submit(skipped)
    assert skipped == [] and written == []  # handed over; the coordinator goes on while it is written
    release.set()
    writer.submit([outcome("bad", MemberStatus.SKIPPED)])  # waits for the first: one batch in flight at most
    assert written == [["a"]]
    with pytest.raises(RuntimeError, match="database gone"):
        writer.wait()
    writer.close()
