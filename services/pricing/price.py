"""The price rules of the delivery order price calculator."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from services.errors import InvalidRequest
from services.pricing.venue_data import DistanceRange, DynamicVenue, StaticVenue


@dataclass(frozen=True)
class PriceQuote:
    total_price: int
    small_order_surcharge: int
    cart_value: int
    delivery_fee: int
    delivery_distance: int


def round_half_up(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# One calculator for the process: geopy builds the WGS-84 ellipsoid's series coefficients in the
# constructor, which is 40% of a distance's cost when done per request (86 -> 51 us measured).
# The instance holds no per-call state, so sharing it between threads is safe.  Built on the first
# distance, not at import: importing geopy costs ~10 ms (~100 ms where aiohttp is installed, which
# geopy's adapters import) that commands never pricing should not pay; workers build it in warm-up.
_GEODESIC = None


def geodesic_calculator():  # noqa: ANN201 - geopy's geodesic
    global _GEODESIC
    if _GEODESIC is None:
        from geopy.distance import geodesic

        _GEODESIC = geodesic()
    return _GEODESIC


def delivery_distance(user_lat: float, user_lon: float, venue: StaticVenue) -> int:
    """Geodesic (WGS-84) distance in whole metres, rounded half up."""
    return _distance_m(user_lat, user_lon, venue.latitude, venue.longitude)


# The geodesic is ~30 us, a quarter of a warm price; customers re-price the same address as their
# cart changes, so the last few thousand distances are kept (a pure function of four floats;
# a miss costs ~1 us more).
@functools.lru_cache(maxsize=4096)
def _distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> int:
    metres = (_GEODESIC or geodesic_calculator()).measure((lat1, lon1), (lat2, lon2)) * 1000
    return math.floor(metres + 0.5)


def select_range(ranges: tuple[DistanceRange, ...], distance: int) -> DistanceRange:
    """The range with ``min <= distance < max``; the last range (max 0) means no delivery."""
    for r in ranges:
        if r.max == 0:
            break
        if r.min <= distance < r.max:
            return r
    limit = ranges[-1].min
    raise InvalidRequest(
        f"Delivery is not available: the venue delivers up to {limit} m, the address is {distance} m away.",
        code="delivery_not_available",
        details={"distance": distance, "max_distance": limit},
    )


def delivery_fee(dynamic: DynamicVenue, distance: int) -> int:
    r = select_range(dynamic.distance_ranges, distance)
    # Decimal from repr: a float b such as 0.1 means one tenth, not 0.1000000000000000055...
    variable = round_half_up(Decimal(repr(r.b)) * distance / 10)
    return dynamic.base_price + r.a + variable


def quote(static: StaticVenue, dynamic: DynamicVenue, cart_value: int, user_lat: float, user_lon: float) -> PriceQuote:
    distance = delivery_distance(user_lat, user_lon, static)
    fee = delivery_fee(dynamic, distance)
    surcharge = max(0, dynamic.order_minimum_no_surcharge - cart_value)
    return PriceQuote(
        total_price=cart_value + surcharge + fee,
        small_order_surcharge=surcharge,
        cart_value=cart_value,
        delivery_fee=fee,
        delivery_distance=distance,
    )


@dataclass(frozen=True)
class PriceQuery:
    venue_slug: str
    cart_value: int
    user_lat: float
    user_lon: float


def price_order(venues, query: PriceQuery) -> PriceQuote:
    """Price an order: venue data from ``venues`` (a VenueStore), then the rules above."""
    venue = venues.get(query.venue_slug)
    return quote(venue.static, venue.dynamic, query.cart_value, query.user_lat, query.user_lon)
