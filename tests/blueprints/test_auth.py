"""API keys on member-level data: scopes, 401/403 in the envelope, open endpoints, the OpenAPI schemes."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from app import create_app
from config import ConfigError
from services.auth import api_keys
from services.auth.api_keys import Scope
from services.tables import ApiKey
from tests.auth_fixtures import new_key

RUNS = "/api/v1/offer-runs"
OFFER = "/api/v1/offers"
OFFER_BODY = {"member_id": "F44DBBBC", "as_of": "2024-01-05",
              "transactions": [{"ts": "2023-12-10 11:24:18", "type": "gift", "points": 9600, "revenue_usd": 32.0}]}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_runs_without_a_key_are_401_in_the_envelope_with_www_authenticate(anonymous):
    response = anonymous.get(RUNS)
    assert response.status_code == 401
    assert response.get_json() == {
        "error": response.get_json()["error"], "code": "unauthorized", "details": {"required_scope": "runs:read"}}
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_real_time_offers_without_a_key_are_401_and_no_partner_is_called(anonymous, mock_partner_never_called):
    response = anonymous.post(OFFER, json=OFFER_BODY)
    assert response.status_code == 401 and response.get_json()["details"] == {"required_scope": "offers:score"}


@pytest.fixture
def mock_partner_never_called():
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps
        assert not rsps.calls


@pytest.mark.parametrize("key", [
    "not-a-key",
    "courier_000000000000_" + "A" * 43,  # well-formed, unknown id
    "Bearer",
])
def test_malformed_or_unknown_keys_are_401(anonymous, key):
    response = anonymous.get(RUNS, headers=bearer(key))
    assert response.status_code == 401 and response.get_json()["code"] == "unauthorized"


def test_a_wrong_secret_for_a_real_key_id_is_401(app, anonymous):
    key = new_key(app, Scope.RUNS_READ)
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert anonymous.get(RUNS, headers=bearer(forged)).status_code == 401
    assert anonymous.get(RUNS, headers=bearer(key)).status_code == 200


def test_runs_read_reads_runs_but_cannot_score(app, anonymous):
    key = new_key(app, Scope.RUNS_READ)
    assert anonymous.get(RUNS, headers=bearer(key)).status_code == 200
    response = anonymous.post(OFFER, json=OFFER_BODY, headers=bearer(key))
    assert response.status_code == 403
    assert response.get_json()["code"] == "insufficient_scope"
    assert response.get_json()["details"] == {"required_scope": "offers:score"}
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_offers_score_cannot_read_runs(app, anonymous):
    key = new_key(app, Scope.OFFERS_SCORE)
    response = anonymous.get(f"{RUNS}/1/export.csv", headers=bearer(key))
    assert response.status_code == 403 and response.get_json()["details"] == {"required_scope": "runs:read"}


def test_the_x_api_key_header_works_too(app, anonymous):
    key = new_key(app, Scope.RUNS_READ)
    assert anonymous.get(RUNS, headers={"X-API-Key": key}).status_code == 200


def test_a_revoked_key_is_refused_on_the_next_request(app, anonymous):
    key = new_key(app, Scope.RUNS_READ)
    assert anonymous.get(RUNS, headers=bearer(key)).status_code == 200
    key_id = key.split("_")[1]
    with app.extensions["courier"].session() as session, session.begin():
        api_keys.revoke_key(session, key_id)
    assert anonymous.get(RUNS, headers=bearer(key)).status_code == 401


def test_open_endpoints_need_no_key_by_default(anonymous):
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/openapi.json").status_code == 200
    assert anonymous.get("/docs").status_code == 200
    price = anonymous.get("/api/v1/delivery-order-price?venue_slug=x")  # 400 for the query, not 401
    assert price.status_code == 400
    assert anonymous.post("/api/v1/delivery-estimate", json={}).status_code == 400


def test_with_no_open_scopes_every_api_endpoint_needs_a_key(app_config):
    app = create_app({**app_config, "OPEN_SCOPES": ""})
    client = app.test_client()
    for path in ("/readyz", "/metrics", "/openapi.json", "/api/v1/delivery-order-price?venue_slug=x"):
        assert client.get(path).status_code == 401, path
    ops_key = new_key(app, Scope.OPS_READ)
    assert client.get("/readyz", headers=bearer(ops_key)).status_code == 200
    assert client.get("/openapi.json", headers=bearer(ops_key)).status_code == 403
    app.extensions["courier"].close()


def test_liveness_and_the_reference_partner_stay_open_with_no_open_scopes(app_config):
    app = create_app({**app_config, "OPEN_SCOPES": ""})
    client = app.test_client()
    assert client.get("/healthz").status_code == 200  # a probe carries no key
    assert client.get("/partners/reference/").status_code == 200  # a partner is called without our keys
    doc = client.get("/openapi.json", headers=bearer(new_key(app, Scope.DOCS_READ))).get_json()
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/readyz"]["get"]["x-required-scope"] == "ops:read"
    app.extensions["courier"].close()


def test_an_unknown_open_scope_stops_start_up_naming_the_variable(app_config):
    with pytest.raises(ConfigError, match="COURIER_OPEN_SCOPES='runs:reed'.*unknown scope.*runs:reed"):
        create_app({**app_config, "OPEN_SCOPES": "runs:reed"})


def test_only_a_salted_hash_of_the_secret_is_stored(app):
    key = new_key(app, Scope.RUNS_READ)
    _, key_id, secret = key.split("_", 2)
    with app.extensions["courier"].session() as session:
        row = session.scalars(select(ApiKey)).one()
    stored = " ".join(str(v) for v in (row.id, row.name, row.scopes, row.salt, row.secret_sha256))
    assert secret not in stored and key not in stored
    assert row.id == key_id
    assert row.secret_sha256 == hashlib.sha256(bytes.fromhex(row.salt) + secret.encode()).hexdigest()
    other = new_key(app, Scope.RUNS_READ)
    with app.extensions["courier"].session() as session:
        salts = {r.salt for r in session.scalars(select(ApiKey))}
    assert len(salts) == 2 and other != key


def test_secrets_are_compared_in_constant_time_even_for_an_unknown_id(app, anonymous, monkeypatch):
    compared = []
    real = api_keys.hmac.compare_digest
    monkeypatch.setattr(api_keys.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    key = new_key(app, Scope.RUNS_READ)
    anonymous.get(RUNS, headers=bearer(key))
    anonymous.get(RUNS, headers=bearer("courier_000000000000_" + "A" * 43))
    assert len(compared) == 2


def test_openapi_declares_the_key_schemes_per_operation(anonymous):
    doc = anonymous.get("/openapi.json").get_json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerKey"] == {"type": "http", "scheme": "bearer",
                                    "description": schemes["bearerKey"]["description"]}
    assert schemes["headerKey"]["in"] == "header" and schemes["headerKey"]["name"] == "X-API-Key"
    runs = doc["paths"]["/api/v1/offer-runs"]["get"]
    assert runs["security"] == [{"bearerKey": []}, {"headerKey": []}] and runs["x-required-scope"] == "runs:read"
    assert {"401", "403"} <= set(runs["responses"])
    assert doc["paths"]["/api/v1/offers"]["post"]["x-required-scope"] == "offers:score"
    assert doc["paths"]["/api/v1/delivery-order-price"]["get"]["security"] == []
    assert doc["paths"]["/healthz"]["get"]["security"] == []


def test_a_view_without_a_declared_scope_stops_start_up():
    from flask import Flask

    from blueprints.auth import protect

    app = Flask("t")
    app.add_url_rule("/new", "new", lambda: "x")
    with pytest.raises(RuntimeError, match="views without a declared scope: new"):
        protect(app, set(Scope))
