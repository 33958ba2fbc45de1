"""Delivery order price: ``GET /api/v1/delivery-order-price``."""

from __future__ import annotations

import math
import re
from typing import Any

from flask import Blueprint, current_app
from marshmallow import Schema, ValidationError, fields

from blueprints.auth import requires
from blueprints.declare import operation
from capabilities.pricing import pricing_capability
from services.auth.api_keys import Scope
from services.pricing.price import PriceQuery, price_order

bp = Blueprint("pricing", __name__)


SLUG_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,127}$")
_INT_RE = re.compile(r"^[0-9]{1,18}$")
_FLOAT_RE = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")


class Slug(fields.Field):
    def json_schema(self) -> dict:
        return {"type": "string", "maxLength": 128, "pattern": SLUG_RE.pattern}

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not SLUG_RE.match(value):
            raise ValidationError("must be 1-128 characters: letters, digits, '-', '_', '.' (not '..'), "
                                  "starting with a letter or digit")
        return value


class CartValue(fields.Field):
    def json_schema(self) -> dict:
        return {"type": "integer", "minimum": 0, "maximum": self.metadata["cap"]()}

    def _deserialize(self, value, attr, data, **kwargs):
        cap = self.metadata["cap"]()
        if not isinstance(value, str) or not _INT_RE.match(value):
            raise ValidationError("must be a non-negative whole number (smallest currency unit)")
        number = int(value)
        if number > cap:
            raise ValidationError(f"must be at most {cap}")
        return number


class Coordinate(fields.Field):
    def json_schema(self) -> dict:
        return {"type": "number", "minimum": -self.metadata["limit"], "maximum": self.metadata["limit"]}

    def _deserialize(self, value, attr, data, **kwargs):
        limit = self.metadata["limit"]
        if not isinstance(value, str) or not _FLOAT_RE.match(value):
            raise ValidationError("must be a decimal number")
        number = float(value)
        if not math.isfinite(number) or not -limit <= number <= limit:
            raise ValidationError(f"must be between {-limit} and {limit}")
        return number


def _cart_cap() -> int:
    return current_app.config["PRICING_MAX_CART_VALUE"]


class PriceQuerySchema(Schema):
    # The examples are the Helsinki case of the README: Swagger's "Try it out" starts filled with them.
    venue_slug = Slug(required=True, metadata={"example": "home-assignment-venue-helsinki",
                                               "description": "The venue, as the venue API names it."})
    cart_value = CartValue(required=True, metadata={
        "cap": _cart_cap, "example": 1000,
        "description": "The cart's value in the currency's smallest unit (cents)."})
    user_lat = Coordinate(required=True, metadata={
        "limit": 90, "example": 60.17094, "description": "Latitude of the delivery address (WGS84 degrees)."})
    user_lon = Coordinate(required=True, metadata={
        "limit": 180, "example": 24.93087, "description": "Longitude of the delivery address (WGS84 degrees)."})

    def quick_load(self, data: dict) -> dict | None:
        """What ``load`` returns for a well-formed query, in a tenth of its time; None for anything else.

        marshmallow's generic machinery was ~20 us of a ~120 us warm price.  Every check here is
        the field's own (same regular expressions, same bounds); any doubt returns None and the
        full ``load`` names each bad field.
        """
        try:
            slug, cart, lat, lon = data["venue_slug"], data["cart_value"], data["user_lat"], data["user_lon"]
        except KeyError:
            return None
        if not (type(slug) is str and type(cart) is str and type(lat) is str and type(lon) is str
                and SLUG_RE.match(slug) and _INT_RE.match(cart) and _FLOAT_RE.match(lat) and _FLOAT_RE.match(lon)):
            return None
        cart_value, user_lat, user_lon = int(cart), float(lat), float(lon)
        if cart_value > _cart_cap() or not (-90 <= user_lat <= 90 and -180 <= user_lon <= 180):
            return None  # NaN fails the comparisons too; inf is out of range
        return {"venue_slug": slug, "cart_value": cart_value, "user_lat": user_lat, "user_lon": user_lon}


class DeliverySchema(Schema):
    fee = fields.Integer(required=True)
    distance = fields.Integer(required=True, metadata={"description": "Metres, straight line"})


class DeliveryOrderPriceSchema(Schema):
    total_price = fields.Integer(required=True)
    small_order_surcharge = fields.Integer(required=True)
    cart_value = fields.Integer(required=True)
    delivery = fields.Nested(DeliverySchema, required=True)


# What this endpoint answers to cart_value=x (tests/blueprints/test_openapi_coverage.py holds it to that).
INVALID_REQUEST_EXAMPLE = {"error": "Invalid query parameters.", "code": "invalid_request",
                           "details": {"cart_value": ["must be a non-negative whole number (smallest currency unit)"]}}

# What a well-formed request beyond the venue's delivery area answers (the test below checks it).
NOT_AVAILABLE_EXAMPLE = {"error": "Delivery is not available: the venue delivers up to 2000 m, the address is "
                                  "6538 m away.", "code": "delivery_not_available",
                         "details": {"distance": 6538, "max_distance": 2000}}

_query = PriceQuerySchema()
_price = DeliveryOrderPriceSchema()


@bp.get("/api/v1/delivery-order-price")
@requires(Scope.PRICING_READ)
@operation(summary="Price a delivery order", tag="pricing", query=_query, response=_price,
           response_description="Price", errors=(400, 404, 502, 503, 504),
           error_examples={400: INVALID_REQUEST_EXAMPLE},
           refusals={400: {"delivery_not_available": NOT_AVAILABLE_EXAMPLE}},
           description="Money in the currency's smallest unit, distance in metres. 400 `delivery_not_available` "
                       "when the address is beyond the venue's last distance range.")
def delivery_order_price(query: dict[str, Any]) -> dict[str, Any]:
    quote = price_order(pricing_capability().venues, PriceQuery(**query))
    return {"total_price": quote.total_price, "small_order_surcharge": quote.small_order_surcharge,
            "cart_value": quote.cart_value,
            "delivery": {"fee": quote.delivery_fee, "distance": quote.delivery_distance}}
