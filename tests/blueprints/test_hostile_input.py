"""Hostile inputs get a 4xx envelope naming the field, never a 500."""

import pytest


@pytest.mark.parametrize("path", ["/api/v1/delivery-estimate", "/", "/api/v1/offers",
                                  "/partners/reference/ml/ats/predict", "/partners/reference/offer/assign/batch"])
def test_json_nested_too_deeply_is_a_client_error_not_a_500(client, path):
    response = client.post(path, data="[" * 1000 + "]" * 1000, content_type="application/json")
    assert response.status_code in (400, 422)
    assert response.get_json()["details"] == {"body": ["not valid JSON"]}


def test_a_cursor_beyond_64_bits_is_400_naming_the_cursor(client):
    import base64

    cursor = base64.urlsafe_b64encode(str(2**70).encode()).decode().rstrip("=")
    response = client.get(f"/api/v1/offer-runs?cursor={cursor}")
    assert response.status_code == 400 and "cursor" in response.get_json()["details"]


def test_a_model_that_yields_nan_is_a_500_envelope_never_nan_json(client, app, seeded_prep_times, monkeypatch):
    model = app.extensions["courier.estimate"].model
    monkeypatch.setattr(model, "predict", lambda *args: float("nan"))
    response = client.post("/api/v1/delivery-estimate",
                           json={"venue_id": "8a61b8c", "time_received": "2017-01-25 03:16:07", "is_retail": True})
    text = response.get_data(as_text=True)
    assert response.status_code == 500 and response.get_json()["code"] == "model_error"
    assert "NaN" not in text
