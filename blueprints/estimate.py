"""Delivery-time estimate: ``POST /api/v1/delivery-estimate`` (and ``POST /`` for the original's clients)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app
from marshmallow import EXCLUDE, Schema, ValidationError, fields
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from blueprints.auth import requires
from blueprints.common import TIMESTAMP_PATTERN, parsed_timestamp
from blueprints.declare import Operation, operation
from blueprints.errors import (
    courier_error_response,
    database_error_response,
    http_error_response,
    internal_error_response,
)
from blueprints.openapi import ErrorSchema
from capabilities.estimate import estimate_capability
from services.auth.api_keys import Scope
from services.errors import CourierError
from services.estimate.estimator import EstimateQuery, estimate_delivery
from services.estimate.prep_times import MAX_VENUE_ID_LENGTH

bp = Blueprint("estimate", __name__)


class TimeReceived(fields.Field):
    """A timestamp whose hour is used as written: an offset is accepted but not applied."""

    def json_schema(self) -> dict:
        return {"type": "string", "pattern": TIMESTAMP_PATTERN}

    def _deserialize(self, value, attr, data, **kwargs):
        return parsed_timestamp(value, "must be 'YYYY-MM-DD HH:MM:SS[.ffffff]' or ISO 8601 with 'T', optional offset")


class RetailFlag(fields.Field):
    """JSON true/false; 0 and 1 are accepted too, as the original service's clients send them
    (the training data's column is 0/1), and the document says so."""

    def json_schema(self) -> dict:
        return {"oneOf": [{"type": "boolean"}, {"type": "integer", "enum": [0, 1]}]}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            return value
        if type(value) in (int, float) and value in (0, 1):  # JSON Schema's integer 1 includes 1.0
            return bool(value)
        raise ValidationError("must be a boolean (true/false; 0/1 accepted)")


# Spaces, tabs and line breaks around a venue id are trimmed (a pasted id); what is left is 1 to
# MAX_VENUE_ID_LENGTH characters.  The published pattern says exactly that, so a schema-valid id is
# never refused for its length after trimming.
_PADDING = " \t\r\n"
_PAD = r"[ \t\r\n]"  # _PADDING as a regex class
_NOT_PAD = r"[^ \t\r\n]"
VENUE_ID_PATTERN = rf"^{_PAD}*{_NOT_PAD}(?:[\s\S]{{0,{MAX_VENUE_ID_LENGTH - 2}}}{_NOT_PAD})?{_PAD}*$"


def trimmed_venue_id(value: Any) -> str | None:
    """The venue id without its padding, if 1 to MAX_VENUE_ID_LENGTH characters remain; else None."""
    if type(value) is not str:
        return None
    venue_id = value.strip(_PADDING)
    return venue_id if 1 <= len(venue_id) <= MAX_VENUE_ID_LENGTH else None


class VenueId(fields.Field):
    def json_schema(self) -> dict:
        return {"type": "string", "pattern": VENUE_ID_PATTERN}

    def _deserialize(self, value, attr, data, **kwargs):
        venue_id = trimmed_venue_id(value)
        if venue_id is None:
            raise ValidationError(f"must be a string of 1 to {MAX_VENUE_ID_LENGTH} characters besides the spaces, "
                                  "tabs and line breaks around it")
        return venue_id


class EstimateRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # clients of the original service may send more keys

    venue_id = VenueId(required=True, metadata={"example": "8a61b8c"})
    time_received = TimeReceived(required=True, metadata={
        "example": "2017-01-25 03:16:07.938113",
        "description": "Order time. The model uses the hour as written: no timezone conversion."})
    is_retail = RetailFlag(required=True, metadata={
        "example": True, "description": "0 and 1 are accepted too (original service's clients)."})

    def quick_load(self, data) -> dict | None:
        """What ``load`` returns for a well-formed body, without marshmallow's generic machinery
        (~15 us of an estimate); None for anything else, and the full ``load`` names each bad field.
        Every check is the field's own: same expression, same bounds, same parsing."""
        if type(data) is not dict:
            return None
        venue_id, stamp, retail = trimmed_venue_id(data.get("venue_id")), data.get("time_received"), data.get(
            "is_retail")
        if venue_id is None or type(stamp) is not str or not (
                retail is True or retail is False or (type(retail) in (int, float) and retail in (0, 1))):
            return None
        try:
            received = parsed_timestamp(stamp, "")
        except ValidationError:
            return None
        return {"venue_id": venue_id, "time_received": received, "is_retail": bool(retail)}


class EstimateResponseSchema(Schema):
    result = fields.Float(required=True, metadata={"description": "Predicted delivery time, minutes."})
    error = fields.Raw(allow_none=True, metadata={"description": "Always null on success."})
    venue_known = fields.Boolean(required=True)
    model_version = fields.String(required=True)


class EstimateErrorSchema(ErrorSchema):
    result = fields.Raw(allow_none=True, metadata={"description": "Always null on errors.", "nullable": True})


_request_schema = EstimateRequestSchema()
_response_schema = EstimateResponseSchema()
_NULL_RESULT = {"result": None}
ESTIMATE = Operation(
    summary="Predict delivery time in minutes", tag="estimate",
    description=("`time_received`'s hour is used as written (no timezone conversion). Unknown venues use the "
                 "median preparation time (`venue_known: false`) unless `COURIER_ESTIMATE_UNKNOWN_VENUE=reject` "
                 "(404). Errors also carry `result: null`."),
    body=_request_schema, response=_response_schema, response_description="Prediction",
    body_example={"venue_id": "8a61b8c", "time_received": "2017-01-25 03:16:07.938113", "is_retail": True},
    errors=(400, 404, 413, 503), error_schema=EstimateErrorSchema, invalid_message="Invalid estimate request.")


@bp.post("/api/v1/delivery-estimate")
@requires(Scope.ESTIMATE_READ)
@operation(ESTIMATE)
def delivery_estimate(body: dict[str, Any]) -> dict[str, Any]:
    return _estimate(body)


@bp.post("/")
@requires(Scope.ESTIMATE_READ)
@operation(ESTIMATE, summary="Same as /api/v1/delivery-estimate (the original service's path)")
def delivery_estimate_legacy(body: dict[str, Any]) -> dict[str, Any]:
    return _estimate(body)


def _estimate(data: dict[str, Any]) -> dict[str, Any]:
    capability = estimate_capability()
    estimate = estimate_delivery(
        capability.model,
        capability.prep_times.get(),
        EstimateQuery(venue_id=data["venue_id"], hour_of_day=data["time_received"].hour,
                      is_retail=data["is_retail"]),
        current_app.config["ESTIMATE_UNKNOWN_VENUE"],
    )
    return {"result": estimate.minutes, "error": None, "venue_known": estimate.venue_known,
            "model_version": estimate.model_version}


# Errors of this endpoint carry "result": null as well, like the original service's answers.
@bp.errorhandler(CourierError)
def _courier_error(exc):
    return courier_error_response(exc, _NULL_RESULT)


@bp.errorhandler(HTTPException)
def _http_error(exc):
    return http_error_response(exc, _NULL_RESULT)


# Blueprint handlers are consulted before the app's, so this endpoint needs its own database one:
# without it, its Exception handler turned a database outage on a cold worker into a 500.
@bp.errorhandler(OperationalError)
@bp.errorhandler(InterfaceError)
def _database_error(exc):
    return database_error_response(exc, _NULL_RESULT)


@bp.errorhandler(Exception)
def _internal_error(exc):
    return internal_error_response(exc, _NULL_RESULT)
