"""Keys, partner header secrets and database passwords never reach logs, bodies, run records or /readyz."""

from __future__ import annotations

import logging

import pytest

from app import create_app
from config import DATA_DIR
from tests.auth_fixtures import new_key
from tests.offers_fixtures import LivePartner

PARTNER_SECRET = "partner-s3cret-token-8d1f"
DB_PASSWORD = "db-s3cret-pw-41c2"
OFFER_BODY = {"member_id": "F44DBBBC", "as_of": "2024-01-05",
              "transactions": [{"ts": "2023-12-10 11:24:18", "type": "gift", "points": 9600, "revenue_usd": 32.0}]}


@pytest.fixture
def partner():
    live = LivePartner(fail={"/offer/assign": lambda body: 500 if body and body.get("ats_prediction", 0) < 0 else None})
    yield live
    live.close()


def test_a_run_with_a_partner_header_secret_leaks_no_secret(app_config, tmp_path, monkeypatch, caplog, partner):
    registry = tmp_path / "partners.toml"
    registry.write_text((DATA_DIR / "partners.toml").read_text()
                        + '\n[partners.reference.headers]\nX-Partner-Token = "COURIER_TEST_PARTNER_TOKEN"\n')
    monkeypatch.setenv("COURIER_TEST_PARTNER_TOKEN", PARTNER_SECRET)
    caplog.set_level(logging.DEBUG)
    app = create_app({**app_config, "PARTNERS_FILE": str(registry), "SERVICE_URL": partner.service_url,
                      "ACCESS_LOG": True})
    key = new_key(app)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {key}"}

    run = app.test_cli_runner().invoke(args=["run-offers", "--input", str(DATA_DIR / "member_data.csv"),
                                             "--as-of", "2024-01-05", "--output", str(tmp_path / "out.csv")])
    assert run.exit_code == 0, run.output
    bodies = [run.output, (tmp_path / "out.csv").read_text(), (tmp_path / "out.csv.summary.json").read_text()]
    for path in ("/api/v1/offer-runs", "/api/v1/offer-runs/1", "/api/v1/offer-runs/1/results?limit=500",
                 "/api/v1/offer-runs/1/export.csv", "/readyz", "/api/v1/offer-runs/999"):
        bodies.append(client.get(path, headers=auth).get_data(as_text=True))
    offer = client.post("/api/v1/offers", json=OFFER_BODY, headers=auth)
    assert offer.status_code == 200
    partner.fail["/ml/ats/predict"] = lambda body: 500  # an upstream error body too
    failed = client.post("/api/v1/offers", json=OFFER_BODY, headers=auth)
    assert failed.status_code == 503
    bodies += [offer.get_data(as_text=True), failed.get_data(as_text=True),
               client.get("/api/v1/offer-runs", headers={"Authorization": "Bearer " + key[:-1] + "x"}).get_data(
                   as_text=True)]

    # The secret did go where it belongs: every partner call carried it.
    assert partner.headers and all(h.get(b"x-partner-token") == PARTNER_SECRET.encode() for h in partner.headers)
    seen = "\n".join(bodies) + "\n" + caplog.text + "\n" + "\n".join(
        str(r.__dict__) for r in caplog.records)  # every structured field of every log record
    secret_part = key.split("_", 2)[2]
    for secret in (PARTNER_SECRET, key, secret_part):
        assert secret not in seen
    app.extensions["courier"].close()


def test_a_database_password_never_reaches_readyz_or_the_logs(app_config, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"postgresql+psycopg://courier:{DB_PASSWORD}@127.0.0.1:1/courier?connect_timeout=1"
    pytest.importorskip("psycopg")
    app = create_app({**app_config, "DATABASE_URL": url, "ACCESS_LOG": True})
    client = app.test_client()
    ready = client.get("/readyz")
    runs = client.get("/api/v1/offer-runs", headers={"Authorization": "Bearer courier_000000000000_" + "A" * 43})
    assert ready.status_code == 503 and runs.status_code == 503  # the key check needs the database
    seen = ready.get_data(as_text=True) + runs.get_data(as_text=True) + caplog.text + "\n".join(
        str(r.__dict__) for r in caplog.records)
    assert "database_unavailable" in runs.get_data(as_text=True)
    assert DB_PASSWORD not in seen
    app.extensions["courier"].close()
