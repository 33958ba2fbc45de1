"""Parsing venue API documents: what is read, and what is refused rather than priced wrongly."""

import copy
import json

import pytest

from config import DATA_DIR
from services.pricing.venue_data import VenueDataError, parse_dynamic, parse_static

HELSINKI_STATIC = json.loads((DATA_DIR / "venues/home-assignment-venue-helsinki.static.json").read_text())
HELSINKI_DYNAMIC = json.loads((DATA_DIR / "venues/home-assignment-venue-helsinki.dynamic.json").read_text())
STOCKHOLM_DYNAMIC = json.loads((DATA_DIR / "venues/home-assignment-venue-stockholm.dynamic.json").read_text())


def test_coordinates_are_longitude_then_latitude():
    venue = parse_static(HELSINKI_STATIC)
    assert (venue.latitude, venue.longitude) == (60.17012143, 24.92813512)


def test_dynamic_fields():
    venue = parse_dynamic(HELSINKI_DYNAMIC)
    assert venue.order_minimum_no_surcharge == 1000 and venue.base_price == 190
    assert [(r.min, r.max, r.a, r.b) for r in venue.distance_ranges] == [
        (0, 500, 0, 0), (500, 1000, 100, 0), (1000, 1500, 200, 0), (1500, 2000, 200, 1), (2000, 0, 0, 0)]


def test_float_b_is_accepted():
    assert parse_dynamic(STOCKHOLM_DYNAMIC).distance_ranges[3].b == 10.0


def _with_ranges(ranges):
    doc = copy.deepcopy(HELSINKI_DYNAMIC)
    doc["venue_raw"]["delivery_specs"]["delivery_pricing"]["distance_ranges"] = ranges
    return doc


def R(lo, hi, a=0, b=0):
    return {"min": lo, "max": hi, "a": a, "b": b, "flag": None}


@pytest.mark.parametrize(
    ("ranges", "problem"),
    [
        ([], "empty"),
        ([R(100, 500), R(500, 0)], "start at 0"),
        ([R(0, 500), R(500, 1000)], "max 0"),
        ([R(0, 500), R(600, 0)], "not contiguous"),
        ([R(0, 1000), R(500, 0)], "not contiguous"),
        ([R(0, 500), R(500, 400), R(400, 0)], "empty or reversed"),
        ([R(0, 500, a=-5), R(500, 0)], "a must be a non-negative"),
        ([R(0, 500, b=-1), R(500, 0)], "negative"),
        ([R(0, 500, a=10.5), R(500, 0)], "whole amount"),
        ([R(0, 500, b="1"), R(500, 0)], "finite number"),
        ([{"min": 0, "a": 0, "b": 0}, R(500, 0)], "max must be"),
    ],
)
def test_invalid_ranges_are_refused(ranges, problem):
    with pytest.raises(VenueDataError, match=problem):
        parse_dynamic(_with_ranges(ranges))


def test_integral_float_a_is_accepted():
    assert parse_dynamic(_with_ranges([R(0, 500, a=100.0), R(500, 0)])).distance_ranges[0].a == 100


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["venue_raw"]["delivery_specs"].pop("order_minimum_no_surcharge"),
        lambda d: d["venue_raw"]["delivery_specs"]["delivery_pricing"].__setitem__("base_price", -1),
        lambda d: d["venue_raw"]["delivery_specs"]["delivery_pricing"].__setitem__("base_price", None),
        lambda d: d.pop("venue_raw"),
    ],
)
def test_missing_or_bad_money_is_refused(mutate):
    doc = copy.deepcopy(HELSINKI_DYNAMIC)
    mutate(doc)
    with pytest.raises(VenueDataError):
        parse_dynamic(doc)


@pytest.mark.parametrize("coords", [[24.9], [24.9, 91.0], [200.0, 60.0], ["24.9", "60.1"], None])
def test_bad_coordinates_are_refused(coords):
    with pytest.raises(VenueDataError):
        parse_static({"venue_raw": {"location": {"coordinates": coords}}})


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda p: p.__setitem__("base_price", 10**30), "base_price must be at most"),
        (lambda p: p["distance_ranges"][0].__setitem__("a", 10**12), "a must be at most"),
        (lambda p: p["distance_ranges"][0].__setitem__("b", 1e300), "b must be at most"),
        (lambda p: p["distance_ranges"][0].__setitem__("max", 10**15), "max must be at most"),
    ],
)
def test_numbers_too_large_for_any_real_venue_are_refused(mutate, problem):
    doc = copy.deepcopy(HELSINKI_DYNAMIC)
    mutate(doc["venue_raw"]["delivery_specs"]["delivery_pricing"])
    with pytest.raises(VenueDataError, match=problem):
        parse_dynamic(doc)
