"""The same code on PostgreSQL: only the database URL changes.

Runs when COURIER_TEST_POSTGRES_URL points at an empty database (`.ci/run` starts a local
PostgreSQL and sets it); skipped otherwise.
"""

import os
from datetime import date

import pytest

from app import create_app
from config import DATA_DIR
from services import migrations
from services.offers.runs.lifecycle import RunOptions
from services.offers.runs.local import run_offers
from tests.auth_fixtures import keyed_client
from tests.offers_fixtures import fresh_postgres, postgres_in_schema

PG_URL = postgres_in_schema(os.environ.get("COURIER_TEST_POSTGRES_URL"), "postgres_suite")
pytestmark = pytest.mark.skipif(not PG_URL, reason="COURIER_TEST_POSTGRES_URL not set")


@pytest.fixture(scope="module")
def pg_app():
    fresh_postgres(PG_URL)
    app = create_app({"DATABASE_URL": PG_URL, "ACCESS_LOG": False, "TESTING": True, "VENUE_API_URL": ""})
    yield app
    app.extensions["courier"].close()


def test_migrations_match_the_models_on_postgres(pg_app):
    engine = pg_app.extensions["courier"].engine
    assert migrations.schema_drift(engine) == []
    assert pg_app.test_client().get("/readyz").status_code == 200


def test_seed_price_and_estimate_on_postgres(pg_app):
    runner = pg_app.test_cli_runner()
    assert runner.invoke(args=["seed-venues"]).exit_code == 0
    again = runner.invoke(args=["seed-venues"])
    assert "0 inserted, 5 updated" in again.output
    client = pg_app.test_client()
    price = client.get("/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki&cart_value=1000"
                       "&user_lat=60.17094&user_lon=24.93087").get_json()
    assert price == {"total_price": 1190, "small_order_surcharge": 0, "cart_value": 1000,
                     "delivery": {"fee": 190, "distance": 177}}
    estimate = client.post("/", json={"venue_id": "8a61b8c", "time_received": "2017-01-25 03:16:07",
                                      "is_retail": True}).get_json()
    assert estimate["venue_known"] is True


def test_offer_run_and_pagination_on_postgres(pg_app, live_partner):
    report = run_offers(pg_app.extensions["courier"].session_factory, live_partner.config(batch=True),
                        RunOptions(str(DATA_DIR / "member_data.csv"), "reference", date(2024, 1, 5), 8))
    assert report.run.status == "succeeded"
    assert (report.run.members_scored, report.run.members_skipped) == (890, 100)
    http = keyed_client(pg_app)
    seen, cursor = [], None
    while True:
        page = http.get(f"/api/v1/offer-runs/{report.run.id}/results?limit=200"
                        + (f"&cursor={cursor}" if cursor else "")).get_json()
        seen += [r["member_id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 990


def test_member_ids_compare_by_their_bytes_on_postgres(pg_app):
    """Migration 0014: whatever the database's collation, results come in byte order, as on SQLite
    and as polars sorts the rows ``--output`` writes from what it recorded."""
    from sqlalchemy import text

    with pg_app.extensions["courier"].engine.connect() as connection:
        collation = connection.execute(text(
            "SELECT collation_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'offer_results' AND column_name = 'member_id'")).scalar_one()
    assert collation == "C"


def test_output_from_the_recorded_results_is_the_output_read_back_on_postgres(pg_app, live_partner, tmp_path):
    from services.offers.runs.recording import RecordedResults, write_output

    # ids whose byte order differs from a language's order ("B" < "a" < "b" < "ä"), some as formulas
    lines = (DATA_DIR / "member_data.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    prefixes = ("a", "B", "ä", "b", "=", "_")
    def prefixed(line: str) -> str:  # one prefix per member id, so its transactions stay together
        return prefixes[sum(line.split(",")[0].encode()) % len(prefixes)] + line

    mixed = [lines[0], *map(prefixed, lines[1:])]
    (tmp_path / "members.csv").write_text("".join(mixed), encoding="utf-8")
    sessions = pg_app.extensions["courier"].session_factory
    recorded = RecordedResults()
    run = run_offers(sessions, live_partner.config(batch=True),
                     RunOptions(str(tmp_path / "members.csv"), "reference", date(2024, 1, 5), 8), recorded=recorded).run
    assert run.members_scored and recorded.complete_for(run)
    with sessions() as session:
        write_output(session, run, tmp_path / "kept.csv", recorded)
        write_output(session, run, tmp_path / "read.csv")
    kept = (tmp_path / "kept.csv").read_bytes()
    assert kept == (tmp_path / "read.csv").read_bytes()
    ids = [line.split(b",")[0] for line in kept.splitlines()[1:]]
    assert ids == sorted(ids) and len({i[:1] for i in ids}) > 4  # byte order, every prefix present
