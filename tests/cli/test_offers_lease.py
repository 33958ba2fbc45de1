"""A `run-offers` process killed with SIGKILL: its run is recognised as dead and resumed once, completely."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from config import DATA_DIR
from services.offers.runs import lease
from services.tables import OfferResult, OfferRun
from tests.auth_fixtures import keyed_client
from tests.offers_fixtures import LivePartner

SAMPLE = str(DATA_DIR / "member_data.csv")
FLASK = str(Path(sys.executable).with_name("flask"))


def children_of(pid: int) -> list[str]:
    tasks = Path(f"/proc/{pid}/task")
    return [c for t in tasks.iterdir() for c in (t / "children").read_text().split()] if tasks.exists() else []


def test_a_killed_run_is_abandoned_then_resumed_by_one_process_with_nothing_lost(app, app_config, db_url, tmp_path):
    partner = LivePartner(fail={"/offer/assign": lambda body: time.sleep(0.005)})  # slow enough to kill mid-run
    sessions = app.extensions["courier"].session_factory
    client = keyed_client(app)
    env = {**os.environ, "FLASK_APP": "wsgi", "COURIER_DATABASE_URL": db_url,
           "COURIER_SERVICE_URL": partner.service_url, "COURIER_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([FLASK, "run-offers", "--input", SAMPLE, "--as-of", "2024-01-05", "--no-batch",
                             "--concurrency", "1"], env=env, cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        recorded = 0
        while recorded < 50 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            with sessions() as session:
                recorded = session.scalar(select(func.count()).select_from(OfferResult))
        assert recorded >= 50 and proc.poll() is None, "the run never got going"
        assert children_of(proc.pid) == []  # nothing to orphan: scoring runs in the process itself
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    # Killed a moment ago: its heartbeat is fresh, so the run still looks alive and cannot be resumed.
    assert client.get("/api/v1/offer-runs/1").get_json()["status"] == "running"
    runner = app.test_cli_runner()
    args = ["run-offers", "--input", SAMPLE, "--as-of", "2024-01-05", "--resume", "1"]
    refused = runner.invoke(args=args)
    assert refused.exit_code == 2 and "running in another process" in refused.output

    # The lease runs out (what 30 s of silence does): the run is shown dead, and one resume completes it.
    with sessions() as session, session.begin():
        run = session.get(OfferRun, 1)
        run.heartbeat_at = run.heartbeat_at - timedelta(seconds=lease.LEASE_S + 1)
    assert client.get("/api/v1/offer-runs/1").get_json()["status"] == "abandoned"
    partner.fail.clear()
    app.config["SERVICE_URL"] = partner.service_url
    resumed = runner.invoke(args=args)
    partner.close()
    assert resumed.exit_code == 0, resumed.output
    with sessions() as session:
        members = list(session.scalars(select(OfferResult.member_id).where(OfferResult.run_id == 1)))
        run = session.get(OfferRun, 1)
    assert len(members) == len(set(members)) == 990  # every member once: nothing lost, nothing twice
    assert (run.status, run.members_scored, run.members_skipped) == ("succeeded", 890, 100)
