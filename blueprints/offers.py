"""Offers over REST: a real-time offer for one member, and browsing recorded runs."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context
from marshmallow import Schema, ValidationError, fields, post_dump, validate

from blueprints.auth import requires
from blueprints.common import TIMESTAMP_PATTERN, parsed_timestamp
from blueprints.declare import operation
from blueprints.hooks import db_session
from blueprints.limits import limited
from capabilities.offers import offers_capability
from capabilities.runtime import runtime
from services.auth.api_keys import Scope
from services.errors import InvalidRequest, Unprocessable
from services.offers.features.definitions import STANDARD_FEATURES
from services.offers.features.transactions import TRANSACTION_TYPES
from services.offers.reports import queries as run_service
from services.offers.result_shape import EXPORT_COLUMNS, RESULT_FIELDS, RUN_FIELDS, ResultField, RunField
from services.offers.statuses import MemberStatus, RunStatus

bp = Blueprint("offers", __name__)


class Timestamp(fields.String):
    def json_schema(self) -> dict:
        return {"type": "string", "pattern": TIMESTAMP_PATTERN}

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        parsed_timestamp(text, "must be 'YYYY-MM-DD HH:MM:SS[.ffffff]' (UTC unless it ends in an offset such as "
                               "'Z' or '+02:00'; 'T' also accepted)")
        return text


# Largest magnitude of a transaction's points or revenue.  Real ones are in the tens of thousands;
# the bound keeps every feature (averages of these) well inside what a partner's models take
# (the reference partner's FEATURE_BOUND, 1e15), so a valid request cannot become a partner's 422
# and our 502.  Published as the fields' minimum and maximum.
TRANSACTION_AMOUNT_BOUND = 1e9


class BoundedNumber(fields.Field):
    """A finite JSON number within +-TRANSACTION_AMOUNT_BOUND (booleans are not numbers)."""

    def json_schema(self) -> dict:
        return {"type": "number", "minimum": -TRANSACTION_AMOUNT_BOUND, "maximum": TRANSACTION_AMOUNT_BOUND}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValidationError("must be a finite number")
        if abs(value) > TRANSACTION_AMOUNT_BOUND:
            raise ValidationError(f"must be between {-TRANSACTION_AMOUNT_BOUND:g} and {TRANSACTION_AMOUNT_BOUND:g}")
        return value


class TransactionType(fields.Field):
    """buy, gift or redeem in any letter case, as the CSV input takes them; loaded in lower case."""

    PATTERN = "^(?:" + "|".join("".join(f"[{c.upper()}{c}]" for c in kind) for kind in TRANSACTION_TYPES) + ")$"

    def json_schema(self) -> dict:
        return {"type": "string", "pattern": self.PATTERN}

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or value.lower() not in TRANSACTION_TYPES:
            raise ValidationError(f"must be one of {', '.join(TRANSACTION_TYPES)} (any letter case)")
        return value.lower()


class TransactionSchema(Schema):
    ts = Timestamp(required=True, metadata={"example": "2023-12-10 11:24:18"})
    type = TransactionType(required=True, metadata={"example": "gift"})
    points = BoundedNumber(required=True, metadata={"example": 9600})
    revenue_usd = BoundedNumber(required=True, metadata={"example": 32.0})


class OfferRequestSchema(Schema):
    member_id = fields.String(required=True, validate=validate.Length(min=1, max=128),
                              metadata={"example": "F44DBBBC"})
    transactions = fields.List(fields.Nested(TransactionSchema), required=True,
                               metadata={"minItems": 1, "description": "Empty: 422 no_transactions."})
    partner = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                            metadata={"example": "reference"})
    as_of = fields.Date(load_default=None, metadata={"example": "2024-01-05",
                                                     "description": "Default: today (UTC)."})


_MARSHMALLOW_KINDS: dict[type, type[fields.Field]] = {str: fields.String, float: fields.Float, int: fields.Integer}


def _field(field: ResultField, *, nullable: bool | None = None) -> fields.Field:
    """The marshmallow field of one declared result field (services/offers/result_shape.py)."""
    metadata = {"description": field.description} if field.description else {}
    allow_none = field.nullable if nullable is None else nullable
    return _MARSHMALLOW_KINDS[field.kind](allow_none=allow_none, metadata=metadata)


class _KeepsRegistryFeatures(Schema):
    """A result also carries the features a partner's registry adds beyond the standard eight:
    those keys are the registry's, not declared here, and pass through as they are."""

    @post_dump(pass_original=True)
    def _registry_features(self, data: dict, original: dict, **kwargs) -> dict:
        return {**original, **data} if len(original) > len(data) else data


# A real-time offer always has every feature: the same declarations, never null.
FeaturesSchema = _KeepsRegistryFeatures.from_dict({f.name: _field(f, nullable=False) for f in RESULT_FIELDS
                                   if f.name in STANDARD_FEATURES}, name="FeaturesSchema")


class LatencySchema(Schema):
    ats = fields.Float()
    resp = fields.Float()
    offer = fields.Float()
    total = fields.Float()


class OfferResponseSchema(Schema):
    member_id = fields.String()
    features = fields.Nested(FeaturesSchema)
    ats_prediction = fields.Float()
    resp_prediction = fields.Float()
    offer = fields.String()
    partner = fields.String()
    latency_ms = fields.Nested(LatencySchema)


class ListQuerySchema(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500),
                           metadata={"description": "Page size."})
    cursor = fields.String(load_default=None, metadata={"description": "next_cursor of the previous page."})


class ResultsQuerySchema(ListQuerySchema):
    status = fields.String(load_default=None, validate=validate.OneOf([s.value for s in MemberStatus]),
                           metadata={"description": "Only members with this outcome."})
    offer = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                          metadata={"description": "Only members given this offer, e.g. OFFER_2."})


def _run_field(field: RunField) -> fields.Field:
    """The marshmallow field of one declared run-record key (services/offers/result_shape.py)."""
    metadata: dict = {"description": field.description} if field.description else {}
    if field.name == "status":
        metadata["enum"] = [s.value for s in RunStatus]
    if field.kind is dict:
        return fields.Dict(allow_none=field.nullable, metadata=metadata)
    if field.kind in (date, datetime):
        metadata["format"] = "date" if field.kind is date else "date-time"
        return fields.String(allow_none=field.nullable, metadata=metadata)
    return _MARSHMALLOW_KINDS[field.kind](allow_none=field.nullable, metadata=metadata)


OfferRunSchema = Schema.from_dict({f.name: _run_field(f) for f in RUN_FIELDS}, name="OfferRunSchema")


OfferResultSchema = _KeepsRegistryFeatures.from_dict(
    {f.name: _field(f) for f in RESULT_FIELDS}
    | {"status": fields.String(metadata={"enum": [s.value for s in MemberStatus],
                                         "description": "scored, skipped or failed"})},
    name="OfferResultSchema")


class OfferRunPageSchema(Schema):
    items = fields.List(fields.Nested(OfferRunSchema))
    next_cursor = fields.String(allow_none=True)


class OfferResultPageSchema(Schema):
    items = fields.List(fields.Nested(OfferResultSchema))
    next_cursor = fields.String(allow_none=True)


# Well-formed requests the business rules refuse, as the service answers them (tests check each).
_OFFER_REFUSALS = {
    "last_transaction_after_as_of": {
        "error": "Member 'F44DBBBC' cannot be scored: last_transaction_after_as_of.",
        "code": "last_transaction_after_as_of", "details": {"member_id": "F44DBBBC", "as_of": "2023-12-01"}},
    # A timestamp whose offset puts it before year 1 in UTC ("0001-01-01 00:00:00+05:00"), among
    # usable ones; and as the member's only transaction.
    "invalid_transactions": {"error": "Some transactions are not usable.", "code": "invalid_transactions",
                             "details": {"transactions": {"0": ["invalid timestamp"]}}},
    "no_valid_transactions": {
        "error": "Member 'F44DBBBC' cannot be scored: no_valid_transactions.",
        "code": "no_valid_transactions", "details": {"member_id": "F44DBBBC", "as_of": "2024-01-05"}},
}
_CURSOR_REFUSAL = {400: {run_service.INVALID_CURSOR: {"error": "Invalid cursor.", "code": run_service.INVALID_CURSOR,
                                                      "details": {"cursor": ["not a cursor this API issued"]}}}}

_offer_schema = OfferRequestSchema()
_offer = OfferResponseSchema()
_list_schema = ListQuerySchema()
_results_schema = ResultsQuerySchema()
_NO_CHUNKS_YET = {"total": 0, "done": 0, "running": 0, "pending": 0, "failed": 0}
# Whole records as served (every field of OfferRunSchema), at the stages the operations answer with.
QUEUED_RUN_EXAMPLE = {
    "id": 42, "partner": "reference", "input_file": "members.csv",
    "input_sha256": "96ccfa2fcaacc8a53df1d08f5cd1138a0e0f0c982c2ac4ad2aaea1c3a928819e", "as_of": "2024-01-05",
    "status": "queued", "started_at": "2026-12-06T10:44:26.276877+00:00", "finished_at": None, "concurrency": 32,
    "mode": "distributed", "chunk_size": 5000, "chunks": _NO_CHUNKS_YET, "rows_read": 0, "rows_rejected": 0,
    "members_total": 0, "members_scored": 0, "members_skipped": 0, "members_failed": 0, "offers": {},
    "rejected": {}, "step_metrics": {}, "error": None, "heartbeat_at": None, "source": "api", "input_bytes": 212520,
    "cancel_requested_at": None,
    "progress": {"phase": "waiting for a coordinator", "chunks_done": 0, "chunks_total": 0, "members_done": 0,
                 "members_to_score": 0, "members_per_s": None, "eta_s": None}}
RUNNING_RUN_EXAMPLE = {
    **QUEUED_RUN_EXAMPLE, "status": "running", "heartbeat_at": "2026-12-06T10:44:31.904113+00:00",
    "input_bytes": 24263417, "members_total": 34000, "members_scored": 24000, "members_skipped": 10000,
    "offers": {"OFFER_1": 11568, "OFFER_2": 12432},
    "chunks": {"total": 18, "done": 5, "running": 2, "pending": 11, "failed": 0},
    "progress": {"phase": "scoring", "chunks_done": 5, "chunks_total": 18, "members_done": 24000,
                 "members_to_score": 89974, "members_per_s": 4408.6, "eta_s": 15.0}}
CANCELLING_RUN_EXAMPLE = {**RUNNING_RUN_EXAMPLE, "cancel_requested_at": "2026-12-06T10:44:33.120551+00:00"}

_run = OfferRunSchema()
_run_page = OfferRunPageSchema()
_result = OfferResultSchema()
_result_page = OfferResultPageSchema()


def _at_most_the_transactions_cap(body: Any) -> None:
    """Before loading: a body over the cap is refused without loading each of its transactions."""
    cap = current_app.config["OFFERS_MAX_TRANSACTIONS"]
    if isinstance(body, dict) and isinstance(body.get("transactions"), list) and len(body["transactions"]) > cap:
        raise InvalidRequest("Too many transactions.", details={"transactions": [f"at most {cap} per request"]})


@bp.post("/api/v1/offers")
@requires(Scope.OFFERS_SCORE)
@limited("RATE_LIMIT_OFFERS")
@operation(summary="Real-time offer for one member", tag="offers", body=_offer_schema, response=_offer,
           errors=(400, 404, 413, 422, 429, 502, 503, 504), invalid_message="Invalid offer request.",
           refusals={422: _OFFER_REFUSALS},
           before_load=_at_most_the_transactions_cap,
           body_example={"member_id": "F44DBBBC", "partner": "reference", "as_of": "2024-01-05", "transactions": [
               {"ts": "2023-12-10 11:24:18", "type": "gift", "points": 9600, "revenue_usd": 32.0}]},
           description="Computes the member's features, calls the partner's ATS and RESP endpoints in parallel, "
                       "then its offer endpoint. 400 names each bad field and transaction index; 422 "
                       "`no_transactions`; 404 `partner_not_found`; partner failures 502/503/504.")
def realtime_offer(body: dict[str, Any]) -> Any:
    data = body
    if not data["transactions"]:
        raise Unprocessable("The member has no transactions to score.", code="no_transactions",
                            details={"member_id": data["member_id"]})
    offer = offers_capability().realtime.offer(
        data["partner"] or current_app.config["OFFERS_DEFAULT_PARTNER"],
        data["member_id"],
        data["transactions"],
        data["as_of"] or datetime.now(UTC).date(),
    )
    return offer


@bp.get("/api/v1/offer-runs")
@requires(Scope.RUNS_READ)
@operation(summary="Recorded offer runs, newest first", tag="offers", query=_list_schema, response=_run_page,
           errors=(400,), refusals=_CURSOR_REFUSAL)
def list_runs(query: dict[str, Any]) -> dict[str, Any]:
    items, cursor = run_service.list_runs(db_session(), query["limit"], query["cursor"])
    return {"items": items, "next_cursor": cursor}


@bp.get("/api/v1/offer-runs/<int:run_id>")
@requires(Scope.RUNS_READ)
@operation(summary="One run with its step metrics (and its progress while it runs)", tag="offers", response=_run,
           response_example=RUNNING_RUN_EXAMPLE, errors=(404,))
def run_detail(run_id: int) -> Any:
    return run_service.run_view(db_session(), run_id)


@bp.get("/api/v1/offer-runs/<int:run_id>/results")
@requires(Scope.RUNS_READ)
@operation(summary="A run's per-member results, in member order", tag="offers", query=_results_schema,
           response=_result_page, errors=(400, 404), refusals=_CURSOR_REFUSAL)
def run_results(run_id: int, query: dict[str, Any]) -> dict[str, Any]:
    items, cursor = run_service.list_results(db_session(), run_id, status=query["status"], offer=query["offer"],
                                             limit=query["limit"], cursor=query["cursor"])
    return {"items": items, "next_cursor": cursor}


@bp.get("/api/v1/offer-runs/<int:run_id>/results/<path:member_id>")
@requires(Scope.RUNS_READ)
@operation(summary="One member's result in a run", tag="offers", response=_result, errors=(404,))
def run_result(run_id: int, member_id: str) -> Any:
    return run_service.get_result(db_session(), run_id, member_id)


@bp.get("/api/v1/offer-runs/<int:run_id>/export.csv")
@requires(Scope.RUNS_READ)
@operation(summary="A run's results as CSV (streamed)", tag="offers", media_type="text/csv",
           response={"type": "string"}, response_description="CSV with columns " + ",".join(EXPORT_COLUMNS),
           errors=(404,))
def run_export(run_id: int):
    return export_response(run_id)


def export_response(run_id: int) -> Response:
    """The run's results as a streamed CSV attachment (the API's and the web view's)."""
    # A session of its own: it must outlive the view, until the last chunk is sent.
    session = runtime().session()
    try:
        chunks = run_service.export_csv(session, run_id)
    except Exception:
        session.close()
        raise

    def stream():
        try:
            yield from chunks
        finally:
            session.close()

    return Response(stream_with_context(stream()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="offer-run-{run_id}.csv"'})


@bp.get("/api/v1/offer-runs/<int:run_id>/report")
@requires(Scope.RUNS_READ)
@operation(summary="A run's report: one self-contained HTML page with charts", tag="offers", media_type="text/html",
           response={"type": "string"}, response_description="HTML page", errors=(404,),
           description="The run record, counts, offer split, per-step throughput and latency percentiles, "
                       "partner call latency histograms, members completed over time, failures by reason and the "
                       "features' distributions by offer. Inline SVG, no script, no network; the same page as "
                       "`flask offers report RUN_ID`. An ended run's page has an `ETag`: send it back in "
                       "`If-None-Match` and an unchanged run answers 304 without being drawn again.")
def run_report(run_id: int):
    return report_response(run_id)


def report_response(run_id: int) -> Response:
    """The run's report page, 304 when the client's ETag is current (the API's and the web view's)."""
    from services.offers.reports.html import CSP

    page = offers_capability().reports.get(db_session(), run_id, request.if_none_match)
    response = Response(page.html, status=200 if page.html is not None else 304, mimetype="text/html",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "private, no-cache"})
    if page.etag is not None:
        response.set_etag(page.etag)
    return response
