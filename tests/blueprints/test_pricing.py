"""GET /api/v1/delivery-order-price: the public contract, every input error, every upstream failure."""

import time

import pytest
import requests
import responses
from geographiclib.geodesic import Geodesic

from bench.venue_standin import Knobs, StandInServer
from tests.conftest import VENUE_API
from tests.pricing_fixtures import SLUGS, doc, register_venue

URL = "/api/v1/delivery-order-price"
HELSINKI = "home-assignment-venue-helsinki"


def params(**overrides):
    base = {"venue_slug": HELSINKI, "cart_value": "1000", "user_lat": "60.17094", "user_lon": "24.93087"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def test_published_example(client, mock):
    register_venue(mock, VENUE_API, "helsinki")
    response = client.get(URL, query_string=params())
    assert response.status_code == 200
    assert response.get_json() == {"total_price": 1190, "small_order_surcharge": 0, "cart_value": 1000,
                                   "delivery": {"fee": 190, "distance": 177}}
    assert list(response.get_json()) == ["total_price", "small_order_surcharge", "cart_value", "delivery"]


# At the venue's own location: distance 0, first range (a 0, b 0), so the fee is the base price.
# Hand-computed from the bundled files: (base price, minimum without surcharge).
AT_VENUE = {"helsinki": (190, 1000), "stockholm": (900, 10000), "tallinn": (190, 1000), "berlin": (190, 1000),
            "tokyo": (49, 700)}


@pytest.mark.parametrize("slug", SLUGS)
def test_every_bundled_venue_at_its_own_door(client, mock, slug):
    register_venue(mock, VENUE_API, slug)
    lon, lat = doc(slug, "static")["venue_raw"]["location"]["coordinates"]
    base, minimum = AT_VENUE[slug]
    body = client.get(URL, query_string=params(venue_slug=f"home-assignment-venue-{slug}", cart_value="500",
                                                user_lat=str(lat), user_lon=str(lon))).get_json()
    assert body == {"total_price": 500 + (minimum - 500) + base, "small_order_surcharge": minimum - 500,
                    "cart_value": 500, "delivery": {"fee": base, "distance": 0}}


def test_stockholm_float_b_in_the_fourth_range(client, mock):
    register_venue(mock, VENUE_API, "stockholm")
    lon, lat = doc("stockholm", "static")["venue_raw"]["location"]["coordinates"]
    user_lat = lat + 0.0155  # about 1.7 km north
    metres = Geodesic.WGS84.Inverse(user_lat, lon, lat, lon)["s12"]
    distance = int(metres + 0.5)
    assert 1500 <= distance < 2000
    fee = 900 + 2000 + int(10.0 * distance / 10 + 0.5)
    body = client.get(URL, query_string=params(venue_slug="home-assignment-venue-stockholm", cart_value="12000",
                                                user_lat=repr(user_lat), user_lon=repr(lon))).get_json()
    assert body == {"total_price": 12000 + fee, "small_order_surcharge": 0, "cart_value": 12000,
                    "delivery": {"fee": fee, "distance": distance}}


def test_too_far_is_400_delivery_not_available(client, mock):
    register_venue(mock, VENUE_API, "helsinki")
    response = client.get(URL, query_string=params(user_lat="60.2", user_lon="24.93087"))
    body = response.get_json()
    assert response.status_code == 400 and body["code"] == "delivery_not_available"
    assert body["details"]["max_distance"] == 2000 and body["details"]["distance"] > 2000


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"venue_slug": None}, "venue_slug"),
        ({"cart_value": None}, "cart_value"),
        ({"user_lat": None}, "user_lat"),
        ({"user_lon": None}, "user_lon"),
        ({"cart_value": "-1"}, "cart_value"),
        ({"cart_value": "10.5"}, "cart_value"),
        ({"cart_value": "1e3"}, "cart_value"),
        ({"cart_value": "abc"}, "cart_value"),
        ({"cart_value": ""}, "cart_value"),
        ({"cart_value": "100000001"}, "cart_value"),
        ({"cart_value": "99999999999999999999999"}, "cart_value"),
        ({"user_lat": "90.0001"}, "user_lat"),
        ({"user_lat": "-91"}, "user_lat"),
        ({"user_lon": "180.5"}, "user_lon"),
        ({"user_lat": "nan"}, "user_lat"),
        ({"user_lon": "inf"}, "user_lon"),
        ({"user_lon": "1_0"}, "user_lon"),
        ({"user_lat": "sixty"}, "user_lat"),
        ({"venue_slug": ""}, "venue_slug"),
        ({"venue_slug": "../../admin"}, "venue_slug"),
        ({"venue_slug": "a/b"}, "venue_slug"),
        ({"venue_slug": "x" * 129}, "venue_slug"),
        ({"venue_slug": "venue?x=1"}, "venue_slug"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(client, overrides, field):
    response = client.get(URL, query_string=params(**overrides))
    body = response.get_json()
    assert response.status_code == 400 and body["code"] == "invalid_request"
    assert list(body["details"]) == [field]


def test_every_bad_field_is_reported_at_once(client):
    body = client.get(URL, query_string={"venue_slug": "..", "cart_value": "-1", "user_lat": "100"}).get_json()
    assert set(body["details"]) == {"venue_slug", "cart_value", "user_lat", "user_lon"}


def test_duplicated_parameter_is_400(client):
    response = client.get(URL + "?venue_slug=a&cart_value=1&cart_value=2&user_lat=1&user_lon=1")
    assert response.status_code == 400 and "given 2 times" in response.get_json()["details"]["cart_value"][0]


def test_extreme_but_valid_coordinates_are_accepted(client, mock):
    register_venue(mock, VENUE_API, "helsinki")
    response = client.get(URL, query_string=params(user_lat="-90", user_lon="180"))
    assert response.status_code == 400 and response.get_json()["code"] == "delivery_not_available"


def test_unknown_venue_is_404(client, mock):
    mock.get(f"{VENUE_API}/venues/nope/static", status=404, json={"detail": "not found"})
    mock.get(f"{VENUE_API}/venues/nope/dynamic", status=404, json={"detail": "not found"})
    response = client.get(URL, query_string=params(venue_slug="nope"))
    assert response.status_code == 404 and response.get_json()["code"] == "venue_not_found"


def test_upstream_503_after_retries_is_503_with_retry_after(client, mock, monkeypatch):
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/static", status=503)
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/dynamic", status=503)
    response = client.get(URL, query_string=params())
    assert response.status_code == 503 and response.get_json()["code"] == "upstream_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    # retried: each half asked 1 + VENUE_API_RETRIES (5) times
    assert len(mock.calls) == 2 * 6


def test_upstream_recovering_within_retries_is_a_normal_answer(client, mock):
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/static", status=429, headers={"Retry-After": "0"})
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/static", json=doc("helsinki", "static"))
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/dynamic", status=502)
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/dynamic", json=doc("helsinki", "dynamic"))
    response = client.get(URL, query_string=params())
    assert response.status_code == 200 and response.get_json()["total_price"] == 1190


def test_upstream_timeout_is_504(client, mock):
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/static", body=requests.exceptions.ConnectTimeout())
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/dynamic", json=doc("helsinki", "dynamic"))
    response = client.get(URL, query_string=params())
    assert response.status_code == 504 and response.get_json()["code"] == "upstream_timeout"


def test_malformed_upstream_json_is_502(client, mock):
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/static", body="{not json", content_type="application/json")
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/dynamic", json=doc("helsinki", "dynamic"))
    response = client.get(URL, query_string=params())
    assert response.status_code == 502 and response.get_json()["code"] == "upstream_invalid"


def test_invalid_upstream_ranges_are_502_never_a_price(client, mock):
    bad = doc("helsinki", "dynamic")
    bad["venue_raw"]["delivery_specs"]["delivery_pricing"]["distance_ranges"].pop(2)
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/static", json=doc("helsinki", "static"))
    mock.get(f"{VENUE_API}/venues/{HELSINKI}/dynamic", json=bad)
    response = client.get(URL, query_string=params())
    assert response.status_code == 502 and "contiguous" in response.get_json()["error"]


def test_second_request_is_served_without_upstream(client, mock):
    register_venue(mock, VENUE_API, "helsinki")
    client.get(URL, query_string=params())
    client.get(URL, query_string=params(cart_value="10"))
    assert len(mock.calls) == 2


@pytest.fixture
def offline_config(app_config):
    return {**app_config, "VENUE_API_URL": ""}


def test_offline_mode_prices_seeded_venues(offline_config):
    from app import create_app

    app = create_app(offline_config)
    assert app.test_cli_runner().invoke(args=["seed-venues"]).exit_code == 0
    client = app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:  # any upstream call would fail
        assert client.get(URL, query_string=params()).get_json()["total_price"] == 1190
        assert client.get(URL, query_string=params(venue_slug="unknown")).status_code == 404
        assert len(mock.calls) == 0


def test_openapi_documents_the_endpoint(client):
    op = client.get("/openapi.json").get_json()["paths"][URL]["get"]
    assert {p["name"] for p in op["parameters"]} == {"venue_slug", "cart_value", "user_lat", "user_lon"}
    assert {"200", "400", "404", "502", "503", "504"} <= set(op["responses"])


# --- against the stand-in over real sockets --------------------------------------------------------

@pytest.fixture
def standin():
    with StandInServer(Knobs(seed=7)) as server:
        yield server


def live_app(app_config, url, **extra):
    from app import create_app

    return create_app({**app_config, "VENUE_API_URL": url, **extra})


def test_miss_fetches_static_and_dynamic_in_parallel(app_config, standin):
    import threading

    # Each half waits at the upstream until the other arrives: sequential fetches would break the
    # barrier (its timeout) and the price would fail; parallel ones meet and pass.
    both_halves = threading.Barrier(2, timeout=5)
    standin.app.on_request = lambda path: both_halves.wait()
    client = live_app(app_config, standin.url).test_client()
    assert client.get(URL, query_string=params()).status_code == 200
    assert not both_halves.broken


def test_hanging_upstream_is_504_within_the_deadline(app_config, standin):
    standin.app.knobs.share_hang, standin.app.knobs.hang_s = 1.0, 5.0
    client = live_app(app_config, standin.url, VENUE_API_READ_TIMEOUT_S=0.3, VENUE_API_DEADLINE_S=1.0).test_client()
    started = time.monotonic()
    response = client.get(URL, query_string=params())
    assert response.status_code == 504
    assert time.monotonic() - started < 1.0 + 1.0  # the deadline bounds the call, retries included (generous;
    # without it: 4 attempts of 0.3 s plus backoff)


def test_no_failed_requests_with_20_percent_upstream_429s(app_config, standin):
    standin.app.knobs.share_429, standin.app.knobs.retry_after = 0.2, 0
    client = live_app(app_config, standin.url, VENUE_CACHE_ENABLED=False).test_client()
    statuses = [client.get(URL, query_string=params()).status_code for _ in range(60)]
    assert statuses == [200] * 60
    assert standin.app.stats["429"] > 0  # the upstream really did fail, and we absorbed it


@pytest.mark.parametrize("fault", ["share_hang", "share_malformed"])
def test_cold_requests_survive_20_percent_hung_or_malformed_upstream_answers(app_config, standin, fault):
    # Before: a hung or malformed attempt ended the call (31% / 36% of cold requests failed).
    setattr(standin.app.knobs, fault, 0.2)
    standin.app.knobs.hang_s = 5.0
    client = live_app(app_config, standin.url, VENUE_CACHE_ENABLED=False, VENUE_API_READ_TIMEOUT_S=0.1,
                      VENUE_API_DEADLINE_S=1.5).test_client()
    statuses = [client.get(URL, query_string=params()).status_code for _ in range(40)]
    assert statuses == [200] * 40
    assert standin.app.stats["hang" if fault == "share_hang" else "malformed"] > 0


def test_past_the_ttl_a_hanging_upstream_does_not_delay_the_answer(app_config, standin):
    app = live_app(app_config, standin.url, VENUE_DYNAMIC_TTL_S=60)
    client = app.test_client()
    assert client.get(URL, query_string=params()).status_code == 200  # warm
    store = app.extensions["courier.pricing"].venues
    entry = store._mem["home-assignment-venue-helsinki"]
    store._mem["home-assignment-venue-helsinki"] = type(entry)(entry.data, entry.static_at, entry.dynamic_at - 120)
    standin.app.knobs.share_hang, standin.app.knobs.hang_s = 1.0, 3.0
    hung_before = standin.app.stats["hang"]
    response = client.get(URL, query_string=params())  # past the TTL: served stale at once
    assert response.status_code == 200 and response.get_json()["total_price"] == 1190
    assert store.stats["stale_served"] == 1 and store.stats["revalidations"] == 1
    store.wait_for_refreshes(timeout=10)  # the one background refresh did meet the hanging upstream
    assert standin.app.stats["hang"] > hung_before


def test_a_failed_price_logs_one_line_with_the_outcome_and_attempts_not_urllib3s(app_config, caplog):
    import logging
    import socket

    from app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    app = create_app({**app_config, "VENUE_API_URL": f"http://127.0.0.1:{closed_port}/v1", "VENUE_API_RETRIES": 2})
    with caplog.at_level(logging.INFO):
        response = app.test_client().get(
            "/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki&cart_value=1000"
            "&user_lat=60.17094&user_lon=24.93087")
    assert response.status_code == 503
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]  # 2 x 400 characters before
    [refresh] = [r for r in caplog.records if r.name == "courier.pricing"]
    # refused connections are retried once (the policy's connect retries), whatever VENUE_API_RETRIES says
    assert (refresh.getMessage(), refresh.code, refresh.attempts) == ("venue refresh failed", "upstream_unavailable", 2)
    app.extensions["courier"].close()
