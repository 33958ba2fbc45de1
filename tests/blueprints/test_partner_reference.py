"""The reference partner's endpoints: the public formulas and 422s naming the field."""

import math

import pytest

from app import create_app

PREFIX = "/partners/reference"
FEATURES = {
    "AVG_POINTS_BOUGHT": 2000.0, "AVG_REVENUE_USD": 20.0, "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 1000.0,
    "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 10.0, "PCT_BUY_TRANSACTIONS": 0.5, "PCT_GIFT_TRANSACTIONS": 0.3,
    "PCT_REDEEM_TRANSACTIONS": 0.2, "DAYS_SINCE_LAST_TRANSACTION": 4,
}


def test_ping(client):
    assert client.get(PREFIX + "/").get_json() == {"msg": "pong"}


def test_ats_formula(client):
    # |(0.7*1000 + 0.3*2000) * max(0, 0.5 + 0.3 - 0.2)| = 1300 * 0.6 = 780
    body = client.post(PREFIX + "/ml/ats/predict", json=FEATURES).get_json()
    assert body["prediction"] == pytest.approx(780.0)


def test_ats_activity_is_floored_at_zero(client):
    body = client.post(PREFIX + "/ml/ats/predict", json={**FEATURES, "PCT_BUY_TRANSACTIONS": 0.0,
                                                         "PCT_GIFT_TRANSACTIONS": 0.0,
                                                         "PCT_REDEEM_TRANSACTIONS": 1.0}).get_json()
    assert body["prediction"] == 0.0


def test_ats_is_absolute(client):
    body = client.post(PREFIX + "/ml/ats/predict", json={**FEATURES, "AVG_POINTS_BOUGHT": -5000.0,
                                                         "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": -1000.0}).get_json()
    assert body["prediction"] == pytest.approx(abs((0.7 * -1000 + 0.3 * -5000) * 0.6))


def test_resp_formula(client):
    # 1000 * (0.4*0.5 + 0.3*0.3 + 0.3*0.2) * ((0.3*20 + 0.7*10)/100) / (4+1) = 1000*0.35*0.13/5 = 9.1 -> capped 0.9
    assert client.post(PREFIX + "/ml/resp/predict", json=FEATURES).get_json()["prediction"] == 0.9
    small = {**FEATURES, "AVG_REVENUE_USD": 0.01, "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 0.01,
             "DAYS_SINCE_LAST_TRANSACTION": 999}
    expected = 1000 * 0.35 * ((0.3 * 0.01 + 0.7 * 0.01) / 100) / 1000
    assert client.post(PREFIX + "/ml/resp/predict", json=small).get_json()["prediction"] == pytest.approx(expected)


@pytest.mark.parametrize(("ats", "resp", "offer"), [(1000, 0.2, "OFFER_2"), (400, 0.5, "OFFER_2"),
                                                     (399.9, 0.5, "OFFER_1"), (0, 0.9, "OFFER_1")])
def test_offer_threshold(client, ats, resp, offer):
    body = client.post(PREFIX + "/offer/assign", json={"ats_prediction": ats, "resp_prediction": resp}).get_json()
    assert body == {"offer": offer}


def test_extra_keys_are_ignored(client):
    assert client.post(PREFIX + "/ml/ats/predict", json={**FEATURES, "MEMBER": "x"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "change", "field"),
    [
        ("/ml/ats/predict", {"AVG_POINTS_BOUGHT": None}, "AVG_POINTS_BOUGHT"),
        ("/ml/ats/predict", {"PCT_BUY_TRANSACTIONS": "0.5"}, "PCT_BUY_TRANSACTIONS"),
        ("/ml/ats/predict", {"PCT_GIFT_TRANSACTIONS": True}, "PCT_GIFT_TRANSACTIONS"),
        ("/ml/resp/predict", {"DAYS_SINCE_LAST_TRANSACTION": -1}, "DAYS_SINCE_LAST_TRANSACTION"),
        ("/ml/resp/predict", {"AVG_REVENUE_USD": [1]}, "AVG_REVENUE_USD"),
    ],
)
def test_bad_features_are_422_naming_the_field(client, path, change, field):
    response = client.post(PREFIX + path, json={**FEATURES, **change})
    assert response.status_code == 422
    assert field in response.get_json()["details"] and response.get_json()["code"] == "unprocessable"


def test_missing_feature_and_non_finite_are_422(client):
    body = {k: v for k, v in FEATURES.items() if k != "AVG_REVENUE_USD"}
    response = client.post(PREFIX + "/ml/resp/predict", json=body)
    assert response.status_code == 422 and response.get_json()["details"] == {"AVG_REVENUE_USD": ["missing"]}
    nan = client.post(PREFIX + "/ml/ats/predict", data='{"AVG_POINTS_BOUGHT": NaN}', content_type="application/json")
    assert nan.status_code == 422


def test_non_object_bodies_are_422(client):
    assert client.post(PREFIX + "/ml/ats/predict", json=[1, 2]).status_code == 422
    assert client.post(PREFIX + "/offer/assign", data="nope", content_type="application/json").status_code == 422
    assert client.post(PREFIX + "/offer/assign", json={"ats_prediction": 1}).status_code == 422


def test_prefix_is_configurable_and_can_be_switched_off(app_config):
    moved = create_app({**app_config, "REFERENCE_PARTNER_PREFIX": "/ref"}).test_client()
    assert moved.get("/ref/").get_json() == {"msg": "pong"}
    off = create_app({**app_config, "REFERENCE_PARTNER_ENABLED": False}).test_client()
    assert off.get(PREFIX + "/").status_code == 404


def test_features_beyond_the_published_bound_are_422_naming_them_and_at_the_bound_finite(client):
    from services.offers.reference.formulas import FEATURE_BOUND

    huge = {**FEATURES, "AVG_POINTS_BOUGHT": 1e308, "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 1e308,
            "PCT_BUY_TRANSACTIONS": 1e308}
    response = client.post(PREFIX + "/ml/ats/predict", json=huge)
    assert response.status_code == 422 and "Infinity" not in response.get_data(as_text=True)
    assert set(response.get_json()["details"]) == {"AVG_POINTS_BOUGHT", "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT",
                                                   "PCT_BUY_TRANSACTIONS"}
    resp = client.post(PREFIX + "/ml/resp/predict", json={**FEATURES, "PCT_BUY_TRANSACTIONS": -1e308,
                                                          "AVG_REVENUE_USD": 1e308,
                                                          "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 1e308})
    assert resp.status_code == 422
    extreme = {name: FEATURE_BOUND for name in FEATURES}
    extreme["PCT_REDEEM_TRANSACTIONS"] = -FEATURE_BOUND
    for path in ("/ml/ats/predict", "/ml/resp/predict"):
        at_bound = client.post(PREFIX + path, json=extreme)
        assert at_bound.status_code == 200 and math.isfinite(at_bound.get_json()["prediction"])
    schema = client.get("/openapi.json").get_json()["paths"]["/partners/reference/ml/ats/predict"]["post"]
    bounds = schema["requestBody"]["content"]["application/json"]["schema"]["properties"]["AVG_POINTS_BOUGHT"]
    assert (bounds["minimum"], bounds["maximum"]) == (-FEATURE_BOUND, FEATURE_BOUND)


def generated_members(count, seed=1):
    import random

    rng = random.Random(seed)
    members = []
    for _ in range(count):
        buy, gift = rng.random(), rng.random()
        members.append({
            "AVG_POINTS_BOUGHT": rng.uniform(-5000, 9000), "AVG_REVENUE_USD": rng.uniform(0, 99),
            "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": rng.uniform(-9000, 9000),
            "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": rng.uniform(0, 99), "PCT_BUY_TRANSACTIONS": buy / 2,
            "PCT_GIFT_TRANSACTIONS": gift / 2, "PCT_REDEEM_TRANSACTIONS": 1 - buy / 2 - gift / 2,
            "DAYS_SINCE_LAST_TRANSACTION": rng.randint(0, 2000)})
    return members


def test_batch_endpoints_agree_with_the_per_member_endpoints(client):
    members = generated_members(300)
    ats = client.post(PREFIX + "/ml/ats/predict/batch", json=members).get_json()
    resp = client.post(PREFIX + "/ml/resp/predict/batch", json=members).get_json()
    pairs = [{"ats_prediction": a["prediction"], "resp_prediction": r["prediction"]} for a, r in zip(ats, resp)]
    offers = client.post(PREFIX + "/offer/assign/batch", json=pairs).get_json()
    assert len(ats) == len(resp) == len(offers) == 300
    for member, a, r, pair, o in zip(members, ats, resp, pairs, offers):
        assert client.post(PREFIX + "/ml/ats/predict", json=member).get_json() == a
        assert client.post(PREFIX + "/ml/resp/predict", json=member).get_json() == r
        assert client.post(PREFIX + "/offer/assign", json=pair).get_json() == o
    assert {o["offer"] for o in offers} == {"OFFER_1", "OFFER_2"}


def test_a_bad_batch_item_is_422_naming_its_index_and_field(client):
    members = generated_members(5)
    members[3] = {**members[3], "PCT_BUY_TRANSACTIONS": "lots"}
    del members[1]["DAYS_SINCE_LAST_TRANSACTION"]
    response = client.post(PREFIX + "/ml/resp/predict/batch", json=members)
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "unprocessable"
    assert body["details"] == {"1": {"DAYS_SINCE_LAST_TRANSACTION": ["missing"]},
                               "3": {"PCT_BUY_TRANSACTIONS": ["must be a number, got str"]}}


def test_batches_are_lists_of_at_most_the_documented_size(client):
    from services.offers.reference.formulas import MAX_BATCH

    assert client.post(PREFIX + "/ml/ats/predict/batch", json=FEATURES).status_code == 422
    assert client.post(PREFIX + "/ml/ats/predict/batch", json=[]).status_code == 422
    too_many = client.post(PREFIX + "/offer/assign/batch",
                           json=[{"ats_prediction": 1, "resp_prediction": 1}] * (MAX_BATCH + 1))
    assert too_many.status_code == 422 and str(MAX_BATCH) in too_many.get_json()["error"]
    full = client.post(PREFIX + "/offer/assign/batch", json=[{"ats_prediction": 1, "resp_prediction": 1}] * MAX_BATCH)
    assert full.status_code == 200 and len(full.get_json()) == MAX_BATCH
