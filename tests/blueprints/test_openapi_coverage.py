"""The OpenAPI document covers the app exactly, and every operation is named, summarised and described."""

import re

from openapi_spec_validator import validate

UI_ONLY = {("/docs", "get"), ("/docs/static/{filename}", "get")}  # the Swagger page itself, not an API


def routes(app) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("web."):  # the web view's pages: HTML for people
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found |= {(path, method.lower()) for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    return found


def operations(spec) -> dict[tuple[str, str], dict]:
    return {(path, method): op for path, item in spec["paths"].items() for method, op in item.items()
            if method in {"get", "post", "put", "patch", "delete"}}


def test_every_route_is_documented_and_nothing_else(client, app):
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    assert set(operations(spec)) == routes(app) - UI_ONLY


def test_every_operation_has_a_unique_id_a_summary_and_described_parameters(client):
    ops = operations(client.get("/openapi.json").get_json())
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[a-z_]+", i) for i in ids), ids
    assert ops[("/api/v1/delivery-order-price", "get")]["operationId"] == "pricing_delivery_order_price"
    for key, op in ops.items():
        assert op.get("summary"), key
        for parameter in op.get("parameters", []):
            assert parameter.get("description"), (key, parameter["name"])


def test_try_it_out_starts_filled_with_the_readme_examples(client, seeded_prep_times):
    ops = operations(client.get("/openapi.json").get_json())
    price = {p["name"]: p["example"] for p in ops[("/api/v1/delivery-order-price", "get")]["parameters"]}
    assert price == {"venue_slug": "home-assignment-venue-helsinki", "cart_value": 1000, "user_lat": 60.17094,
                     "user_lon": 24.93087}
    example = ops[("/api/v1/delivery-estimate", "post")]["requestBody"]["content"]["application/json"]["example"]
    assert client.post("/api/v1/delivery-estimate", json=example).status_code == 200
    error = ops[("/api/v1/delivery-order-price", "get")]["responses"]["400"]["content"]["application/json"]
    assert error["examples"]["invalid"]["value"]["code"] == "invalid_request"
    run_result = ops[("/api/v1/offer-runs/{run_id}/results/{member_id}", "get")]["parameters"]
    assert {p["name"]: p["example"] for p in run_result} == {"run_id": 1, "member_id": "F44DBBBC"}
    # the documented error example is what the service really answers
    real = client.get("/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki&cart_value=x"
                      "&user_lat=60.17094&user_lon=24.93087").get_json()
    assert real == error["examples"]["invalid"]["value"]


def test_a_settings_bound_is_documented_from_the_field_that_checks_it(app_config):
    from app import create_app

    app = create_app({**app_config, "PRICING_MAX_CART_VALUE": 5000})
    ops = operations(app.test_client().get("/openapi.json").get_json())
    cart = next(p for p in ops[("/api/v1/delivery-order-price", "get")]["parameters"] if p["name"] == "cart_value")
    assert cart["schema"] == {"type": "integer", "minimum": 0, "maximum": 5000}
    answer = app.test_client().get("/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki"
                                   "&cart_value=5001&user_lat=60.17094&user_lon=24.93087")
    assert answer.status_code == 400 and answer.get_json()["details"] == {"cart_value": ["must be at most 5000"]}
    app.extensions["courier"].close()


def test_every_request_body_has_an_example_the_service_accepts(client, app, seeded_prep_times):
    import responses

    from tests.offers_fixtures import partner_over_http, route_to_app

    partner_over_http(app)  # each example body also reaches the partner routes, over HTTP
    ops = operations(client.get("/openapi.json").get_json())
    bodies = {key: op["requestBody"]["content"]["application/json"] for key, op in ops.items()
              if "application/json" in op.get("requestBody", {}).get("content", {})}
    assert len(bodies) == 9  # estimate twice, the real-time offer, six reference partner routes
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        route_to_app(mock, app)  # the real-time offer's partner calls reach the app's reference partner
        for (path, _), media in bodies.items():
            assert "example" in media, path
            answer = client.post(path, json=media["example"])
            assert answer.status_code == 200, (path, answer.get_json())
    # the documented pair of predictions is what the documented features get from the two models
    def answer(model):
        path = f"/partners/reference/ml/{model}/predict"
        return client.post(path, json=bodies[(path, "post")]["example"]).get_json()["prediction"]

    pair = bodies[("/partners/reference/offer/assign", "post")]["example"]
    assert (answer("ats"), answer("resp")) == (pair["ats_prediction"], pair["resp_prediction"])


def test_sections_come_in_the_declared_order_each_with_its_main_route_first(client):
    from blueprints.openapi import TAGS

    spec = client.get("/openapi.json").get_json()
    assert [t["name"] for t in spec["tags"]] == list(TAGS) and all(t["description"] for t in spec["tags"])
    estimate = [path for path, item in spec["paths"].items() if item.get("post", {}).get("tags") == ["estimate"]]
    assert estimate == ["/api/v1/delivery-estimate", "/"]  # the original service's path after the real one


def test_the_documented_refusal_of_a_valid_price_request_is_what_the_service_answers(client, seeded_prep_times):
    import responses

    from tests.conftest import VENUE_API
    from tests.pricing_fixtures import register_venue

    ops = operations(client.get("/openapi.json").get_json())
    response = ops[("/api/v1/delivery-order-price", "get")]["responses"]["400"]
    assert response["x-refusals"] == ["delivery_not_available"]
    documented = response["content"]["application/json"]["examples"]["delivery_not_available"]["value"]
    with responses.RequestsMock() as mock:
        register_venue(mock, VENUE_API, "helsinki")
        real = client.get("/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki&cart_value=1000"
                          "&user_lat=60.2288&user_lon=24.9281").get_json()  # 6.5 km north of the venue
    assert real == documented


def test_run_operations_show_a_whole_run_record_and_their_errors(client, app):
    """Starting, watching, cancelling and resuming a run each show an example record with exactly the
    fields the service serves, and the rate-limited ones their 429."""
    from blueprints.offers import OfferRunSchema

    ops = operations(client.get("/openapi.json").get_json())
    record_fields = set(OfferRunSchema().fields)
    shown = {("/api/v1/offer-runs", "post"): ("202", "queued"),
             ("/api/v1/offer-runs/{run_id}", "get"): ("200", "running"),
             ("/api/v1/offer-runs/{run_id}/cancel", "post"): ("202", "running"),
             ("/api/v1/offer-runs/{run_id}/resume", "post"): ("202", "queued")}
    for (path, method), (status, run_status) in shown.items():
        example = ops[(path, method)]["responses"][status]["content"]["application/json"]["example"]
        assert set(example) == record_fields and example["status"] == run_status, (path, set(example) ^ record_fields)
        if method == "post":
            limited = ops[(path, method)]["responses"]["429"]["content"]["application/json"]
            assert limited["example"]["code"] == "rate_limited", path
    running = ops[("/api/v1/offer-runs/{run_id}", "get")]["responses"]["200"]["content"]["application/json"]["example"]
    assert set(running["progress"]) == {"phase", "chunks_done", "chunks_total", "members_done", "members_to_score",
                                        "members_per_s", "eta_s"}
