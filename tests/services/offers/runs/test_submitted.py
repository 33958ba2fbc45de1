"""The coordinator task's body (services/offers/runs/submitted.py: coordinate), with a stand-in frame.

The real frame on real workers is in test_submitted_on_workers.py; here, what coordinate decides
around it: which runs it takes, what the record says meanwhile, cancel and shutdown.
"""

import threading
from dataclasses import dataclass
from datetime import date

import pytest

from services.offers.reports.queries import run_view
from services.offers.runs.coordination import CoordinationSettings, coordinate
from services.offers.statuses import RunStatus
from services.tables import OfferRun, utcnow

SETTINGS = CoordinationSettings(max_consecutive_failures=100, database_outage_s=0)


@dataclass
class Report:
    run: OfferRun


class Starter:
    def __init__(self) -> None:
        self.started: list[int] = []

    def check(self) -> None:
        pass

    def start_run(self, run_id: int) -> None:
        self.started.append(run_id)


@pytest.fixture
def sessions(app):
    return app.extensions["courier"].session_factory


def queued_run(sessions, **values) -> int:
    with sessions() as session, session.begin():
        run = OfferRun(partner="reference", input_path="/uploads/x.csv", input_sha256="0" * 64,
                       as_of=date(2024, 1, 5), status=RunStatus.QUEUED.value, concurrency=4, offers={}, rejected={},
                       step_metrics={}, mode="distributed", source="api", **values)
        session.add(run)
        session.flush()
        return run.id


def ending_as(sessions, run_id, status, seen=None):
    """A frame that records what the run's record said while it ran, then ends the run ``status``."""
    def frame(partner, options, *, stop):
        if seen is not None:
            with sessions() as session:
                seen.append(run_view(session, run_id))
            stop.wait(10)
        with sessions() as session, session.begin():
            run = session.get(OfferRun, run_id)
            run.status = status
            session.flush()
            session.expunge(run)
        return Report(run)
    return frame


def test_while_the_input_is_read_the_record_says_so(sessions):
    run_id = queued_run(sessions)
    with sessions() as session:
        assert run_view(session, run_id)["progress"]["phase"] == "waiting for a coordinator"
    seen = []

    def frame(partner, options, *, stop):
        with sessions() as session:
            seen.append(run_view(session, run_id))
        with sessions() as session, session.begin():
            run = session.get(OfferRun, run_id)
            run.status = RunStatus.SUCCEEDED.value
            session.flush()
            session.expunge(run)
        return Report(run)

    assert coordinate(sessions, run_id, lambda name: object(), frame, SETTINGS) == "succeeded"
    assert seen[0]["status"] == "queued" and seen[0]["progress"]["phase"] == "reading input"


@pytest.mark.parametrize("status", [RunStatus.INTERRUPTED, RunStatus.SUCCEEDED])
def test_a_run_that_is_not_queued_is_left_alone(sessions, status):
    run_id = queued_run(sessions)
    with sessions() as session, session.begin():
        session.get(OfferRun, run_id).status = status.value
    called = []
    assert coordinate(sessions, run_id, lambda name: object(), lambda *a, **k: called.append(1), SETTINGS) \
        == "not queued"
    assert called == []


def test_a_live_running_run_is_left_to_its_coordinator_but_a_dead_one_is_taken_over(sessions):
    run_id = queued_run(sessions, heartbeat_at=utcnow())
    with sessions() as session, session.begin():
        session.get(OfferRun, run_id).status = RunStatus.RUNNING.value
    assert coordinate(sessions, run_id, lambda name: object(), lambda *a, **k: None, SETTINGS) == "not queued"
    with sessions() as session, session.begin():
        session.get(OfferRun, run_id).heartbeat_at = None  # its coordinator stopped beating
    assert coordinate(sessions, run_id, lambda name: object(), ending_as(sessions, run_id, "succeeded"),
                      SETTINGS) == "succeeded"


def test_an_unknown_partner_fails_the_run_saying_why(sessions):
    run_id = queued_run(sessions)

    def no_partner(name):
        raise KeyError(name)

    assert coordinate(sessions, run_id, no_partner, lambda *a, **k: None, SETTINGS) == "failed"
    with sessions() as session:
        run = session.get(OfferRun, run_id)
        assert run.status == "failed" and "cannot load partner 'reference'" in run.error


def test_a_worker_shutting_down_hands_the_run_back_to_the_queue(sessions):
    run_id = queued_run(sessions)
    shutdown, starter = threading.Event(), Starter()
    shutdown.set()  # the worker was asked to stop: the watch stops the frame at its first look
    result = coordinate(sessions, run_id, lambda name: object(),
                        ending_as(sessions, run_id, RunStatus.INTERRUPTED.value, seen=[]), SETTINGS,
                        starter=starter, shutdown=shutdown)
    assert result == "handed back" and starter.started == [run_id]
    with sessions() as session:
        assert session.get(OfferRun, run_id).status == "queued"


def test_a_cancel_is_not_handed_back(sessions):
    run_id = queued_run(sessions)
    starter = Starter()

    def cancelled_meanwhile(partner, options, *, stop):
        with sessions() as session, session.begin():
            session.get(OfferRun, run_id).cancel_requested_at = utcnow()
        assert stop.wait(10)  # the watch saw the cancel
        return ending_as(sessions, run_id, RunStatus.INTERRUPTED.value)(partner, options, stop=stop)

    assert coordinate(sessions, run_id, lambda name: object(), cancelled_meanwhile, SETTINGS, starter=starter,
                      shutdown=threading.Event()) == "interrupted"
    assert starter.started == []
