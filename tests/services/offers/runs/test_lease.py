"""Run leases: one process per run, killed runs recognised by their stale heartbeat."""

from __future__ import annotations

import threading
from datetime import date, timedelta

import pytest

from services.offers.runs import lease
from services.offers.runs.recording import create_run, run_record
from services.tables import OfferRun, utcnow


@pytest.fixture
def sessions(app):
    return app.extensions["courier"].session_factory


def make_run(sessions, owner="other-host:1:abcd", beat_age_s=0.0, status="running") -> int:
    with sessions() as session, session.begin():
        run = create_run(session, partner="reference", input_path="x.csv", input_sha256="0" * 64,
                         as_of=date(2024, 1, 5), concurrency=8, owner=owner)
        run.heartbeat_at = utcnow() - timedelta(seconds=beat_age_s)
        run.status = status
        return run.id


def test_a_live_run_cannot_be_claimed(sessions):
    run_id = make_run(sessions, beat_age_s=1)
    assert lease.claim(sessions, run_id, "me:2:ffff") is False


def test_a_run_whose_heartbeat_stopped_is_abandoned_and_claimable(sessions):
    run_id = make_run(sessions, beat_age_s=lease.LEASE_S + 1)
    with sessions() as session:
        assert run_record(session.get(OfferRun, run_id))["status"] == "abandoned"
    assert lease.claim(sessions, run_id, "me:2:ffff") is True
    with sessions() as session:
        run = session.get(OfferRun, run_id)
        assert (run.status, run.lease_owner) == ("running", "me:2:ffff")
        assert run_record(run)["status"] == "running"


def test_a_finished_run_is_claimable_at_once(sessions):
    run_id = make_run(sessions, status="interrupted")
    assert lease.claim(sessions, run_id, "me:2:ffff") is True


def test_of_two_simultaneous_claims_exactly_one_wins(sessions):
    run_id = make_run(sessions, beat_age_s=lease.LEASE_S + 1)
    barrier = threading.Barrier(2)
    outcomes: list[bool] = []

    def contender(owner):
        barrier.wait()
        outcomes.append(lease.claim(sessions, run_id, owner))

    threads = [threading.Thread(target=contender, args=(f"p{i}:1:x",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == [False, True]


def test_a_heartbeat_that_finds_its_lease_taken_stops_the_run(sessions):
    run_id = make_run(sessions, owner="me:1:aaaa")
    lost = threading.Event()
    heartbeat = lease.Heartbeat(sessions, run_id, "me:1:aaaa", on_lost=lost.set, interval_s=0.01)
    heartbeat.start()
    with sessions() as session, session.begin():
        session.get(OfferRun, run_id).lease_owner = "thief:2:bbbb"
    assert lost.wait(5) and heartbeat.lost
    heartbeat.stop()


def test_heartbeats_move_the_heartbeat_forward(sessions):
    run_id = make_run(sessions, owner="me:1:aaaa", beat_age_s=20)
    with sessions() as session:
        before = session.get(OfferRun, run_id).heartbeat_at
    assert lease.beat(sessions, run_id, "me:1:aaaa") is True
    assert lease.beat(sessions, run_id, "someone-else") is False
    with sessions() as session:
        assert session.get(OfferRun, run_id).heartbeat_at > before
