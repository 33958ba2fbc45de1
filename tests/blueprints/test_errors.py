"""Every error the app returns uses one envelope: {"error", "code", "details"} with the right status."""

import pytest
from flask import Blueprint, request
from werkzeug.exceptions import UnsupportedMediaType

from blueprints.common import json_body
from services.errors import Unprocessable, UpstreamInvalid, UpstreamTimeout, UpstreamUnavailable


@pytest.fixture
def app(app):
    bp = Blueprint("boom", __name__)

    @bp.post("/_test/echo")
    def echo():
        return {"got": json_body()}

    @bp.get("/_test/crash")
    def crash():
        raise RuntimeError("secret internals /etc/passwd")

    @bp.get("/_test/raise/<int:status>")
    def raise_status(status):
        if status == 415:
            raise UnsupportedMediaType()
        if status == 422:
            raise Unprocessable("Feature missing.", details={"AVG": ["missing"]})
        if status == 502:
            raise UpstreamInvalid("bad json", upstream="venue-api")
        if status == 503:
            raise UpstreamUnavailable("down", upstream="venue-api", retry_after=7)
        if status == 504:
            raise UpstreamTimeout("slow", upstream="venue-api")
        return {"args": request.args}

    app.register_blueprint(bp)
    app.config["MAX_CONTENT_LENGTH"] = 1024
    return app


def assert_envelope(response, status, code):
    assert response.status_code == status
    assert response.is_json
    body = response.get_json()
    assert set(body) >= {"error", "code", "details"}
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], dict)
    return body


def test_unknown_route_is_404_envelope(client):
    assert_envelope(client.get("/no/such/route"), 404, "not_found")


def test_wrong_method_is_405_and_keeps_allow_header(client):
    response = client.delete("/healthz")
    assert_envelope(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_malformed_json_is_400_naming_the_body(client):
    response = client.post("/_test/echo", data="{not json", content_type="application/json")
    body = assert_envelope(response, 400, "invalid_request")
    assert "body" in body["details"]


def test_non_json_content_type_is_400_naming_content_type(client):
    body = assert_envelope(client.post("/_test/echo", data="a=b"), 400, "invalid_request")
    assert "Content-Type" in body["details"]


def test_oversized_body_is_413(client):
    response = client.post("/_test/echo", data="[" + "1," * 2000 + "1]", content_type="application/json")
    assert_envelope(response, 413, "payload_too_large")


def test_werkzeug_415_uses_envelope(client):
    assert_envelope(client.get("/_test/raise/415"), 415, "unsupported_media_type")


def test_422_carries_details(client):
    body = assert_envelope(client.get("/_test/raise/422"), 422, "unprocessable")
    assert body["details"] == {"AVG": ["missing"]}


def test_unhandled_exception_is_500_without_leaking(client, app):
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = client.get("/_test/crash")
    body = assert_envelope(response, 500, "internal_error")
    text = response.get_data(as_text=True)
    assert "secret" not in text and "Traceback" not in text and "RuntimeError" not in text
    assert body["details"] == {}


@pytest.mark.parametrize(
    ("status", "code"), [(502, "upstream_invalid"), (503, "upstream_unavailable"), (504, "upstream_timeout")]
)
def test_upstream_errors_map_to_5xx(client, status, code):
    body = assert_envelope(client.get(f"/_test/raise/{status}"), status, code)
    assert body["details"]["upstream"] == "venue-api"


def test_503_keeps_retry_after(client):
    assert client.get("/_test/raise/503").headers["Retry-After"] == "7"

