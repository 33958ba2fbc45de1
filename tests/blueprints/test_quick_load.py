"""The fast paths of the hot endpoints' schemas agree with marshmallow's full load, input by input.

``quick_load`` may decline anything (None: the full load runs and names each bad field), but what
it accepts must be exactly what ``load`` returns.
"""

from __future__ import annotations

import random

import pytest
from marshmallow import ValidationError

from blueprints.estimate import EstimateRequestSchema
from blueprints.pricing import PriceQuerySchema

SLUGS = ["home-assignment-venue-helsinki", "a", "a..b", "-x", "x" * 128, "x" * 129, "ä", "a.b_c-d", "", " x"]
NUMBERS = ["0", "1000", "100000000", "100000001", "-1", "1.5", "1e3", "007", " 5", "9" * 19, "", "abc"]
COORDS = ["60.17094", "-90", "90", "90.0001", "180", "-180.5", "1e2", ".5", "5.", "+1", "nan", "inf", "1e400",
          "0x10", "", " 1", "١"]
VENUES = ["8a61b8c", " 8a61b8c ", "", "   ", "x" * 64, "x" * 65, 7, None, "ü"]
STAMPS = ["2017-01-25 03:16:07", "2017-01-25T03:16:07.938113", "2017-01-25 03:16:07Z", "2017-01-25T03:16:07+02:00",
          "2017-01-25T03:16:07-0530", " 2017-01-25 03:16:07 ", "2017-02-30 03:16:07", "2017-01-25 24:00:00",
          "2017-01-25", "2017-01-25 03:16:07.1234567", 20170125, None, "0000-01-01 00:00:00"]
RETAIL = [True, False, 0, 1, 2, -1, 1.0, "true", None]


def outcome(schema, data):
    try:
        return ("ok", schema.load(data))
    except ValidationError:
        return ("rejected", None)


def test_pricing_quick_load_accepts_only_what_load_accepts_and_returns_the_same(app):
    schema, rng = PriceQuerySchema(), random.Random(5)
    accepted = 0
    with app.app_context():
        for _ in range(3000):
            data = {"venue_slug": rng.choice(SLUGS), "cart_value": rng.choice(NUMBERS),
                    "user_lat": rng.choice(COORDS), "user_lon": rng.choice(COORDS)}
            if rng.random() < 0.1:
                data.pop(rng.choice(list(data)))
            quick = schema.quick_load(data)
            if quick is not None:
                accepted += 1
                assert outcome(schema, data) == ("ok", quick), data
        assert schema.quick_load({"venue_slug": "home-assignment-venue-helsinki", "cart_value": "1000",
                                  "user_lat": "60.17094", "user_lon": "24.93087"}) is not None
    assert accepted > 30  # the fast path is really taken for well-formed queries


@pytest.mark.parametrize("seed", range(3))
def test_estimate_quick_load_accepts_only_what_load_accepts_and_returns_the_same(seed):
    schema, rng = EstimateRequestSchema(), random.Random(seed)
    accepted = 0
    for _ in range(2000):
        data = {"venue_id": rng.choice(VENUES), "time_received": rng.choice(STAMPS), "is_retail": rng.choice(RETAIL)}
        if rng.random() < 0.1:
            data.pop(rng.choice(list(data)))
        if rng.random() < 0.1:
            data["extra"] = "ignored"
        quick = schema.quick_load(data)
        if quick is not None:
            accepted += 1
            assert outcome(schema, data) == ("ok", quick), data
    assert accepted > 100
    assert schema.quick_load(["not", "a", "dict"]) is None
