"""An offers run rides out a database restart (gap: a PostgreSQL restart mid-run, 0.74 s, ended the
coordinator at once and left the run `running`). The database sits behind a proxy the test takes
down (every connection dropped, new ones refused, as a restarting server does) and brings back."""

from __future__ import annotations

import os
import threading
from datetime import date

import pytest
from sqlalchemy.engine import make_url

from app import create_app
from config import DATA_DIR
from services.offers.runs.distributed.coordinator import DistributedSettings, run_distributed
from services.offers.runs.lifecycle import RunOptions
from services.offers.runs.local import run_offers
from tests.live_servers import PausableTcpProxy
from tests.offers_fixtures import fresh_postgres, postgres_in_schema, recorded_results

PG_URL = postgres_in_schema(os.environ.get("COURIER_TEST_POSTGRES_URL"), "offers_outage")
pytestmark = pytest.mark.skipif(not PG_URL, reason="COURIER_TEST_POSTGRES_URL not set")
SAMPLE = str(DATA_DIR / "member_data.csv")
ATS = "/ml/ats/predict"


@pytest.fixture
def proxy():
    url = make_url(PG_URL)
    server = PausableTcpProxy(url.host or "127.0.0.1", url.port or 5432)
    yield server
    server.close()


@pytest.fixture
def sessions(proxy):
    fresh_postgres(PG_URL)
    proxied = make_url(PG_URL).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    app = create_app({"DATABASE_URL": proxied, "ACCESS_LOG": False, "TESTING": True})
    yield app.extensions["courier"].session_factory
    app.extensions["courier"].close()


def outage_at_call(proxy, partner, n: int, restored: threading.Event) -> None:
    """The n-th ATS call takes the database down for 1.5 s (twice a measured PostgreSQL restart),
    while the run goes on scoring and writing."""
    calls = []

    def hook(body):
        calls.append(1)
        if len(calls) == n:
            proxy.down()
            threading.Timer(1.5, lambda: (proxy.up(), restored.set())).start()

    partner.fail[ATS] = hook


def test_a_local_run_waits_out_a_database_restart(sessions, proxy, module_partner):
    restored = threading.Event()
    outage_at_call(proxy, module_partner, 300, restored)
    options = RunOptions(SAMPLE, "reference", date(2024, 1, 5), 8, use_batch=False, database_outage_s=30)
    try:
        report = run_offers(sessions, module_partner.config(), options)
    finally:
        module_partner.fail.clear()
    assert restored.is_set()
    assert report.run.status == "succeeded", report.run.error
    assert (report.run.members_scored, report.run.members_skipped) == (890, 100)
    rows = recorded_results(sessions, report.run.id)
    assert len(rows) == len({r[0] for r in rows}) == 990


def test_the_coordinator_of_a_distributed_run_waits_out_a_database_restart(sessions, proxy, module_partner):
    from tests.services.offers.runs.distributed.test_coordinator import ThreadQueue

    restored = threading.Event()
    outage_at_call(proxy, module_partner, 300, restored)
    config = module_partner.config()
    queue = ThreadQueue(sessions, config, beat_s=0.2)
    options = RunOptions(SAMPLE, "reference", date(2024, 1, 5), 8, use_batch=False, database_outage_s=30)
    try:
        report = run_distributed(sessions, config, options, queue,
                                 DistributedSettings(chunk_size=100, stall_s=60, silent_s=2, lost_after_s=1))
    finally:
        module_partner.fail.clear()
        queue.close()
    assert restored.is_set()
    assert report.run.status == "succeeded", report.run.error
    rows = recorded_results(sessions, report.run.id)
    assert len(rows) == len({r[0] for r in rows}) == 990
