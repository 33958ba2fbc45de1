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
