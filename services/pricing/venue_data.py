"""Venue data as the price calculation needs it, and parsing of the venue API's documents.

The same parsers read live API responses and the bundled snapshot files, so both are held to
the same rules.  Anything that could produce a wrong price (unsorted or gapped ranges,
negative or fractional money) is rejected as invalid data rather than served.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Upper bounds on what an upstream may send.  Anything larger is not a real venue's data, and
# 10**30 as a base price was served once and then failed to store (BIGINT): refuse it up front.
MAX_MONEY = 10**9  # smallest currency unit: 10 million euros
MAX_DISTANCE_M = 10**7  # metres: a quarter of the Earth's circumference
MAX_MULTIPLIER = 10**6  # per 10 metres


class VenueDataError(Exception):
    """A venue document cannot be used; the message says where and why."""


@dataclass(frozen=True)
class DistanceRange:
    min: int
    max: int  # 0: delivery not available from ``min`` on
    a: int  # flat addition, smallest currency unit
    b: float  # multiplier per 10 metres (may be fractional; the product is rounded)


@dataclass(frozen=True)
class StaticVenue:
    latitude: float
    longitude: float


@dataclass(frozen=True)
class DynamicVenue:
    order_minimum_no_surcharge: int
    base_price: int
    distance_ranges: tuple[DistanceRange, ...]


@dataclass(frozen=True)
class VenueData:
    slug: str
    static: StaticVenue
    static_fetched_at: datetime
    dynamic: DynamicVenue
    dynamic_fetched_at: datetime


def _dig(doc: Any, *keys: str) -> Any:
    cur = doc
    for key in keys:
        if not isinstance(cur, dict) or key not in cur:
            raise VenueDataError(f"missing {'.'.join(keys)}")
        cur = cur[key]
    return cur


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise VenueDataError(f"{what} must be a finite number, got {value!r}")
    return value


def _money(value: Any, what: str, maximum: int = MAX_MONEY) -> int:
    number = _number(value, what)
    if number < 0 or number != int(number):
        raise VenueDataError(f"{what} must be a non-negative whole amount, got {value!r}")
    if number > maximum:
        raise VenueDataError(f"{what} must be at most {maximum}, got {value!r}")
    return int(number)


def parse_static(doc: Any) -> StaticVenue:
    coords = _dig(doc, "venue_raw", "location", "coordinates")
    if not isinstance(coords, list) or len(coords) != 2:
        raise VenueDataError(f"venue_raw.location.coordinates must be [longitude, latitude], got {coords!r}")
    lon = _number(coords[0], "longitude")
    lat = _number(coords[1], "latitude")
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise VenueDataError(f"coordinates out of range: [longitude {lon}, latitude {lat}]")
    return StaticVenue(latitude=float(lat), longitude=float(lon))


def validate_ranges(ranges: list[DistanceRange]) -> None:
    if not ranges:
        raise VenueDataError("distance_ranges is empty")
    if ranges[0].min != 0:
        raise VenueDataError(f"first distance range must start at 0, starts at {ranges[0].min}")
    if ranges[-1].max != 0:
        raise VenueDataError(f"last distance range must have max 0 (no delivery beyond), has {ranges[-1].max}")
    for i, r in enumerate(ranges):
        if r.min < 0 or r.max < 0 or r.a < 0 or r.b < 0:
            raise VenueDataError(f"distance range {i} has a negative value")
        if r.b > MAX_MULTIPLIER:
            raise VenueDataError(f"distance range {i} b must be at most {MAX_MULTIPLIER}, got {r.b!r}")
        if i < len(ranges) - 1:
            if r.max <= r.min:
                raise VenueDataError(f"distance range {i} is empty or reversed ({r.min}..{r.max})")
            if ranges[i + 1].min != r.max:
                raise VenueDataError(f"distance ranges {i} and {i + 1} are not contiguous "
                                     f"({r.max} != {ranges[i + 1].min})")


def parse_dynamic(doc: Any) -> DynamicVenue:
    specs = ("venue_raw", "delivery_specs")
    minimum = _money(_dig(doc, *specs, "order_minimum_no_surcharge"), "order_minimum_no_surcharge")
    base_price = _money(_dig(doc, *specs, "delivery_pricing", "base_price"), "base_price")
    raw_ranges = _dig(doc, *specs, "delivery_pricing", "distance_ranges")
    if not isinstance(raw_ranges, list):
        raise VenueDataError("distance_ranges must be a list")
    ranges = []
    for i, raw in enumerate(raw_ranges):
        if not isinstance(raw, dict):
            raise VenueDataError(f"distance range {i} is not an object")
        ranges.append(DistanceRange(
            min=_money(raw.get("min"), f"distance range {i} min", MAX_DISTANCE_M),
            max=_money(raw.get("max"), f"distance range {i} max", MAX_DISTANCE_M),
            a=_money(raw.get("a"), f"distance range {i} a"),
            b=float(_number(raw.get("b"), f"distance range {i} b")),
        ))
    validate_ranges(ranges)
    return DynamicVenue(order_minimum_no_surcharge=minimum, base_price=base_price, distance_ranges=tuple(ranges))


def ranges_to_json(ranges: tuple[DistanceRange, ...]) -> list[dict]:
    return [{"min": r.min, "max": r.max, "a": r.a, "b": r.b} for r in ranges]


def ranges_from_json(raw: list[dict]) -> tuple[DistanceRange, ...]:
    return tuple(DistanceRange(int(r["min"]), int(r["max"]), int(r["a"]), float(r["b"])) for r in raw)
