"""POST /api/v1/delivery-estimate (and POST /): the original service's answers, with better edges."""

import statistics

import pytest

from config import DATA_DIR
from services.estimate.model import load_model
from services.estimate.prep_times import upsert_prep_times

ORIGINAL = str(DATA_DIR / "models" / "original.json")
EXAMPLE = {"venue_id": "8a61b8c", "time_received": "2017-01-25 03:16:07.938113", "is_retail": True}


@pytest.fixture
def app_config(app_config):
    return {**app_config, "MODEL_PATH": ORIGINAL}


@pytest.fixture
def client(client, seeded_prep_times):
    return client


@pytest.mark.parametrize("path", ["/api/v1/delivery-estimate", "/"])
def test_published_example(client, path):
    response = client.post(path, json=EXAMPLE)
    assert response.status_code == 200
    body = response.get_json()
    assert body["result"] == 21.162891387939453
    assert body["error"] is None and body["venue_known"] is True
    assert body["model_version"].startswith("original-")


@pytest.mark.parametrize(
    "time_received",
    ["2017-01-25T03:59:59", "2017-01-25T03:00:00+05:00", "2017-01-25T03:10:00Z", "2017-01-25 03:16:07"],
)
def test_hour_is_used_as_written_without_timezone_conversion(client, time_received):
    body = client.post("/api/v1/delivery-estimate", json={**EXAMPLE, "time_received": time_received}).get_json()
    assert body["result"] == 21.162891387939453


def test_retail_flag_accepts_0_and_1(client):
    as_int = client.post("/", json={**EXAMPLE, "is_retail": 1}).get_json()["result"]
    assert as_int == 21.162891387939453
    non_retail = client.post("/", json={**EXAMPLE, "is_retail": 0}).get_json()["result"]
    assert non_retail == client.post("/", json={**EXAMPLE, "is_retail": False}).get_json()["result"]
    assert non_retail != as_int
    # 1.0 is the integer 1 to JSON Schema, which the document declares (oneOf boolean, integer 0/1)
    assert client.post("/", json={**EXAMPLE, "is_retail": 1.0}).get_json()["result"] == as_int
    assert client.post("/", json={**EXAMPLE, "is_retail": 0.5}).status_code == 400


def test_venue_id_is_trimmed(client):
    assert client.post("/", json={**EXAMPLE, "venue_id": "  8a61b8c "}).get_json()["venue_known"] is True


def test_unknown_venue_uses_the_median_preparation_time(client, seeded_prep_times):
    body = client.post("/", json={**EXAMPLE, "venue_id": "no-such-venue"}).get_json()
    median = statistics.median(seeded_prep_times.values())
    assert body["venue_known"] is False
    assert body["result"] == load_model(ORIGINAL).predict(1, median, 3)


def test_unknown_venue_rejected_when_configured(client, app):
    app.config["ESTIMATE_UNKNOWN_VENUE"] = "reject"
    response = client.post("/", json={**EXAMPLE, "venue_id": "no-such-venue"})
    assert response.status_code == 404
    body = response.get_json()
    assert body["code"] == "venue_not_found" and body["result"] is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"time_received": EXAMPLE["time_received"], "is_retail": True}, "venue_id"),
        ({**EXAMPLE, "venue_id": ""}, "venue_id"),
        ({**EXAMPLE, "venue_id": "   "}, "venue_id"),
        ({**EXAMPLE, "venue_id": 123}, "venue_id"),
        ({**EXAMPLE, "venue_id": "x" * 65}, "venue_id"),
        ({"venue_id": "8a61b8c", "is_retail": True}, "time_received"),
        ({**EXAMPLE, "time_received": "yesterday"}, "time_received"),
        ({**EXAMPLE, "time_received": "2017-13-25 03:16:07"}, "time_received"),
        ({**EXAMPLE, "time_received": "2017-01-25"}, "time_received"),
        ({**EXAMPLE, "time_received": 1485314167}, "time_received"),
        ({"venue_id": "8a61b8c", "time_received": EXAMPLE["time_received"]}, "is_retail"),
        ({**EXAMPLE, "is_retail": "true"}, "is_retail"),
        ({**EXAMPLE, "is_retail": 2}, "is_retail"),
        ({**EXAMPLE, "is_retail": None}, "is_retail"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(client, payload, field):
    response = client.post("/api/v1/delivery-estimate", json=payload)
    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == "invalid_request" and body["result"] is None
    assert field in body["details"]


def test_non_json_body_is_400(client):
    response = client.post("/", data="{broken", content_type="application/json")
    assert response.status_code == 400 and "body" in response.get_json()["details"]


def test_wrong_content_type_is_400(client):
    response = client.post("/", data="venue_id=8a61b8c")
    body = response.get_json()
    assert response.status_code == 400 and "Content-Type" in body["details"] and body["result"] is None


def test_json_that_is_not_an_object_is_400(client):
    assert client.post("/", json=[EXAMPLE]).status_code == 400


def test_mapping_change_is_served_without_restart(client, app):
    afternoon = {**EXAMPLE, "time_received": "2017-01-25 15:16:07"}
    before = client.post("/", json=afternoon).get_json()["result"]
    with app.extensions["courier"].session() as session, session.begin():
        upsert_prep_times(session, {"8a61b8c": 30.0})
    app.extensions["courier.estimate"].prep_times.invalidate()  # the reload interval passing
    after = client.post("/", json=afternoon).get_json()["result"]
    assert after == 25.156749725341797 != before  # the published example for prep 30.0, retail, hour 15


def test_missing_model_makes_readyz_and_estimates_503(app_config, tmp_path):
    from app import create_app

    app = create_app({**app_config, "MODEL_PATH": str(tmp_path / "absent.json")})
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "absent.json" in ready.get_json()["details"]["model"]
    response = client.post("/", json=EXAMPLE)
    assert response.status_code == 503
    assert response.get_json()["code"] == "model_unavailable" and response.get_json()["result"] is None


def test_default_model_is_the_retrained_artifact(app_config):
    from app import create_app

    app = create_app({k: v for k, v in app_config.items() if k != "MODEL_PATH"})
    assert app.extensions["courier.estimate"].model.version.startswith("retrained-")


def test_openapi_documents_both_paths(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "post" in paths["/api/v1/delivery-estimate"] and "post" in paths["/"]
