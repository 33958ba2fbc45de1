"""The price rules: surcharge, distance rounding, range choice, fee and total."""

from decimal import Decimal

import pytest

from services.errors import InvalidRequest
from services.pricing import price
from services.pricing.price import delivery_distance, delivery_fee, quote, round_half_up, select_range
from services.pricing.venue_data import DistanceRange, DynamicVenue, StaticVenue

RANGES = (
    DistanceRange(0, 500, 0, 0.0),
    DistanceRange(500, 1000, 100, 1.0),
    DistanceRange(1000, 1500, 200, 0.0),
    DistanceRange(1500, 2000, 200, 1.0),
    DistanceRange(2000, 0, 0, 0.0),
)
DYNAMIC = DynamicVenue(order_minimum_no_surcharge=1000, base_price=199, distance_ranges=RANGES)


def test_published_fee_example():
    # base 199, range a 100 b 1, distance 600 -> 199 + 100 + round(1 * 600 / 10) = 359
    assert delivery_fee(DYNAMIC, 600) == 359


@pytest.mark.parametrize(("distance", "expected_min"), [(0, 0), (499, 0), (500, 500), (999, 500), (1000, 1000),
                                                        (1999, 1500)])
def test_range_is_min_inclusive_max_exclusive(distance, expected_min):
    assert select_range(RANGES, distance).min == expected_min


@pytest.mark.parametrize("distance", [2000, 2001, 10_000_000])
def test_beyond_the_last_range_is_not_deliverable(distance):
    with pytest.raises(InvalidRequest) as info:
        select_range(RANGES, distance)
    assert info.value.code == "delivery_not_available"
    assert info.value.details == {"distance": distance, "max_distance": 2000}


def test_variable_part_rounds_half_up():
    ranges = (DistanceRange(0, 5000, 0, 0.5), DistanceRange(5000, 0, 0, 0))
    venue = DynamicVenue(0, 0, ranges)
    assert delivery_fee(venue, 10) == 1  # 0.5 * 10 / 10 = 0.5 -> 1 (banker's rounding would give 0)
    assert delivery_fee(venue, 30) == 2  # 1.5 -> 2
    assert delivery_fee(venue, 50) == 3  # 2.5 -> 3 (banker's: 2)
    assert delivery_fee(venue, 49) == 2  # 2.45 -> 2


def test_float_multiplier_is_taken_as_written():
    ranges = (DistanceRange(0, 5000, 0, 0.1), DistanceRange(5000, 0, 0, 0))
    # 0.1 * 1050 / 10 = 10.5 exactly in decimal -> 11 (binary float arithmetic would give 10.499999...)
    assert delivery_fee(DynamicVenue(0, 0, ranges), 1050) == 11


def test_round_half_up():
    assert [round_half_up(Decimal(x)) for x in ("0.5", "1.5", "2.5", "2.49", "0")] == [1, 2, 3, 2, 0]


@pytest.mark.parametrize(("metres", "expected"), [(176.5, 177), (176.49, 176), (0.4, 0), (1999.5, 2000)])
def test_distance_rounds_half_up(monkeypatch, metres, expected):
    class FakeGeodesic:
        def measure(self, a, b):
            return metres / 1000  # geopy measures in kilometres

    monkeypatch.setattr(price, "_GEODESIC", FakeGeodesic())
    price._distance_m.cache_clear()  # remembered distances come from the real geodesic
    assert delivery_distance(0.0, 0.0, StaticVenue(0.0, 0.0)) == expected
    price._distance_m.cache_clear()


def test_remembered_distances_equal_computed_ones():
    import math
    import random

    rng = random.Random(3)
    venue = StaticVenue(60.17012143, 24.92813512)
    for _ in range(200):
        lat, lon = 60.17 + rng.uniform(-0.02, 0.02), 24.93 + rng.uniform(-0.04, 0.04)
        expected = math.floor(price.geodesic_calculator().measure((lat, lon), (venue.latitude, venue.longitude))
                              * 1000 + 0.5)
        assert delivery_distance(lat, lon, venue) == expected == delivery_distance(lat, lon, venue)


def test_distance_is_geodesic_on_wgs84():
    # One degree of latitude at the equator is 110,574 m on WGS-84 (110,574.4 by Karney's method);
    # a great-circle (spherical) distance would give 111,195 m.
    assert delivery_distance(1.0, 0.0, StaticVenue(0.0, 0.0)) == 110574


def test_small_order_surcharge_and_total():
    here = StaticVenue(60.0, 24.0)
    small = quote(here, DYNAMIC, 890, 60.0, 24.0)
    assert (small.small_order_surcharge, small.delivery_fee, small.total_price) == (110, 199, 890 + 110 + 199)
    big = quote(here, DYNAMIC, 5000, 60.0, 24.0)
    assert (big.small_order_surcharge, big.total_price) == (0, 5199)
