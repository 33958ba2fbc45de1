"""Offer runs over REST, the writing half: start one from an uploaded CSV, cancel it, resume it.

Reading runs (list, record, results, export, report) is in ``blueprints.offers``. Runs started here
execute on the Celery workers (``services.offers.runs.submitted``), exactly as ``flask run-offers
--distributed`` runs them, and are the same records.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

from flask import Blueprint, Response, g, jsonify, request, url_for
from marshmallow import Schema, fields, validate

from blueprints.auth import requires
from blueprints.declare import operation
from blueprints.hooks import db_session
from blueprints.limits import limited
from blueprints.offers import CANCELLING_RUN_EXAMPLE, QUEUED_RUN_EXAMPLE, OfferRunSchema
from capabilities.offers import offers_capability
from services.auth.api_keys import Scope
from services.errors import CourierError, InvalidRequest
from services.offers.reports import queries as run_service

if TYPE_CHECKING:  # imported by the first run request: ~5 ms every command and worker start would pay
    from services.offers.runs.submitted import RunRequest

bp = Blueprint("offer_runs", __name__)

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


class RunRequestSchema(Schema):
    """A new run's options (query parameters; the web view's form fields)."""

    partner = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                            metadata={"example": "reference",
                                      "description": "Default: COURIER_OFFERS_DEFAULT_PARTNER."})
    as_of = fields.Date(load_default=None, metadata={"example": "2024-01-05",
                                                     "description": "The date DAYS_SINCE_LAST_TRANSACTION counts to. "
                                                                    "Default: today (UTC)."})
    scoring = fields.String(load_default="batch", validate=validate.OneOf(["batch", "per_member"]),
                            metadata={"description": "batch: the partner's batch endpoints when it has them; "
                                                     "per_member: one call per member."})
    chunk_size = fields.Integer(load_default=None, validate=validate.Range(min=1, max=100_000),
                                metadata={"description": "Members per chunk task. Default: COURIER_OFFERS_CHUNK_SIZE."})


class PayloadTooLarge(CourierError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(CourierError):
    status = 415
    code = "unsupported_media_type"


def run_request(options: dict[str, Any], idempotency_key: str | None) -> RunRequest:
    from services.offers.runs.submitted import RunRequest

    return RunRequest(partner=options["partner"], as_of=options["as_of"] or datetime.now(UTC).date(),
                      use_batch=options["scoring"] == "batch", chunk_size=options["chunk_size"],
                      requested_by=g.get("api_key_id"), idempotency_key=idempotency_key)


def start_run(stream: IO[bytes], name: str | None, run: RunRequest) -> tuple[Any, bool]:
    """Store the upload and queue the run; (the run record, replayed). Shared with the web view."""
    from services.offers.features.input import InputError  # polars: loaded by the first upload, not at start-up
    from services.offers.runs.uploads import UploadTooLarge

    submissions = offers_capability().submissions
    try:
        submitted = submissions.start(cast(BinaryIO, stream), name, run)
    except InputError as exc:
        raise InvalidRequest("The file is not a transaction CSV; nothing was queued.", code="invalid_input",
                             details={"file": [str(exc)]}) from None
    except UploadTooLarge as exc:
        raise _too_large(exc.limit) from None
    return run_service.run_view(db_session(), submitted.run.id), submitted.replayed


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The file is larger than {limit} bytes (COURIER_OFFERS_UPLOAD_MAX_BYTES); nothing was "
                           "queued.", details={"file": [f"at most {limit} bytes"]})


def allow_upload_body() -> None:
    """Let this request's body be as large as an upload may be, instead of COURIER_MAX_CONTENT_LENGTH
    (1 MiB, what every other endpoint takes); a body declared larger is refused before a byte is read.
    Call it before anything reads the body (``request.form`` included)."""
    cap = offers_capability().submissions.uploads.max_bytes
    request.max_content_length = cap + 64 * 1024  # a form's own bytes around the file
    if request.content_length is not None and request.content_length > request.max_content_length:
        raise _too_large(cap)


def upload_stream() -> tuple[IO[bytes], str | None]:
    """The request's CSV and its name: the body itself (``text/csv``; named by a Content-Disposition
    filename, if any), or the ``file`` part of a form upload."""
    allow_upload_body()
    mimetype = request.mimetype
    if mimetype == "text/csv":
        from werkzeug.http import parse_options_header

        _, disposition = parse_options_header(request.headers.get("Content-Disposition", ""))
        return request.stream, disposition.get("filename") or None
    if mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise InvalidRequest("The form has no file.",
                                 details={"file": ["missing: send the CSV as the 'file' part"]})
        return upload.stream, upload.filename or None
    raise UnsupportedMediaType("Send the member CSV as the body (Content-Type: text/csv) or as the 'file' part of a "
                               "multipart/form-data upload.", details={"content_type": [mimetype or "(none)"]})


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise InvalidRequest("Invalid Idempotency-Key.",
                             details={"Idempotency-Key": ["1 to 200 visible ASCII characters"]})
    return key


def _accepted(record: dict[str, Any], status: int = 202, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(OfferRunSchema().dump(record))
    response.status_code = status
    response.headers["Location"] = url_for("offers.run_detail", run_id=record["id"])
    response.headers.update(headers or {})
    return response


_RATE_LIMITED = {429: {"error": "Too many requests for this key: 10 per 1 minute. Retry in 39 s.",
                       "code": "rate_limited", "details": {"limit": "10 per 1 minute", "retry_after_s": 39}}}
_BROKER_DOWN = {503: {"error": "Offer runs cannot be queued: cannot reach the Celery broker at redis://redis:6379/0 "
                               "(OperationalError: Error 111 connecting to redis:6379. Connection refused.); start "
                               "Redis or set COURIER_CELERY_BROKER_URL.",
                      "code": "runs_unavailable", "details": {"setting": "COURIER_CELERY_BROKER_URL"}}}

_CSV_SCHEMA = {"type": "string", "description": "A transaction CSV, either header spelling (as `flask run-offers "
                                                "--input`)."}
_CSV_EXAMPLE = ("memberId,lastTransactionUtcTs,lastTransactionType,lastTransactionPointsBought,"
                "lastTransactionRevenueUSD\nF44DBBBC,2023-12-10 11:24:18,gift,9600,32.0\n")
_LOCATION = {"Location": {"description": "The run's record.", "schema": {"type": "string"}}}
_RUN_CONFLICTS = {409: {
    "run_ended": {"error": "Run 42 already ended succeeded; there is nothing to cancel.", "code": "run_ended",
                  "details": {"run_id": 42, "status": "succeeded"}}}}


@bp.post("/api/v1/offer-runs")
@requires(Scope.RUNS_WRITE)
@limited("RATE_LIMIT_RUN_SUBMISSIONS")
@operation(summary="Start an offers run from a member CSV (executes on the Celery workers)", tag="offers",
           query=RunRequestSchema(), response=OfferRunSchema(), status=202, response_headers=_LOCATION,
           response_description="Accepted: the run is queued; follow `Location`.", response_example=QUEUED_RUN_EXAMPLE,
           request_media={"text/csv": {"schema": _CSV_SCHEMA, "example": _CSV_EXAMPLE},
                          "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                              "file": {"type": "string", "format": "binary"}}}}},
           headers=({"in": "header", "name": "Idempotency-Key", "required": False,
                     "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,200}$"},
                     "description": "A retry with the same key (and the same file and options) answers the same "
                                    "run instead of starting another; with another file: 422 "
                                    "idempotency_key_reused."},),
           errors=(400, 404, 413, 415, 422, 429, 503), refusals={
               400: {"invalid_input": {"error": "The file is not a transaction CSV; nothing was queued.",
                                       "code": "invalid_input",
                                       "details": {"file": ["the body: line 3 is not UTF-8 text"]}}},
               422: {"idempotency_key_reused": {
                   "error": "Idempotency-Key 'nightly-2024-01-05' was used for run 42 with another input or "
                            "options; use a new key for a new run.", "code": "idempotency_key_reused",
                   "details": {"run_id": 42, "idempotency_key": "nightly-2024-01-05"}}}},
           error_examples={**_RATE_LIMITED, 503: {
               "error": "Offer runs over REST execute on Celery workers, which need a database they all share and a "
                        "broker: set COURIER_DATABASE_URL to PostgreSQL and COURIER_CELERY_BROKER_URL to the "
                        "workers' broker (`flask run-offers` works without either).",
               "code": "runs_unavailable", "details": {"setting": "COURIER_DATABASE_URL"}}},
           description="The upload is streamed to the upload folder with its sha256 and checked as `flask "
                       "run-offers` checks its input (header, UTF-8, line length); a bad file is a 400 naming its "
                       "line and nothing is queued. The run is recorded `queued` and coordinated by a worker on "
                       "the `courier.runs` queue, with chunks on the chunk workers. Without PostgreSQL or a "
                       "reachable broker: 503 saying what to set.")
def start(query: dict[str, Any]) -> Response:
    key = _idempotency_key()
    stream, name = upload_stream()
    record, replayed = start_run(stream, name, run_request(query, key))
    return _accepted(record, headers={"Idempotent-Replayed": "true"} if replayed else None)


@bp.post("/api/v1/offer-runs/<int:run_id>/cancel")
@requires(Scope.RUNS_WRITE)
@limited("RATE_LIMIT_RUN_SUBMISSIONS")
@operation(summary="Cancel a run (idempotent)", tag="offers", response=OfferRunSchema(), status=202,
           response_description="The stop is under way: the run ends `interrupted` once its members in flight are "
                                "recorded (pending chunks are revoked); poll its record.",
           other_answers={200: "The run is `interrupted` already (cancelled before it started, or earlier)."},
           response_example=CANCELLING_RUN_EXAMPLE, errors=(404, 409, 429), refusals=_RUN_CONFLICTS,
           error_examples=_RATE_LIMITED)
def cancel(run_id: int) -> Response:
    record = cancel_run(run_id)
    return _accepted(record, status=200 if record["status"] == "interrupted" else 202)


def cancel_run(run_id: int) -> dict[str, Any]:
    """Cancel the run (committed) and return its record. Shared with the web view."""
    session = db_session()
    offers_capability().submissions.cancel(session, run_service.get_run(session, run_id))
    session.commit()
    return run_service.run_view(session, run_id)


@bp.post("/api/v1/offer-runs/<int:run_id>/resume")
@requires(Scope.RUNS_WRITE)
@limited("RATE_LIMIT_RUN_SUBMISSIONS")
@operation(summary="Resume a run that did not succeed (idempotent)", tag="offers", response=OfferRunSchema(),
           status=202, response_description="Queued again (or still queued or running): members recorded as scored "
                                            "or skipped are not sent again.",
           response_example=QUEUED_RUN_EXAMPLE, error_examples={**_RATE_LIMITED, **_BROKER_DOWN},
           errors=(404, 409, 429, 503), refusals={409: {
               **_RUN_CONFLICTS[409],
               "resume_with_cli": {"error": "Run 42 was started by `flask run-offers`, which reads its input from "
                                            "that machine: resume it there with --resume 42.",
                                   "code": "resume_with_cli", "details": {"run_id": 42}},
               "input_removed": {"error": "Run 42's uploaded input was removed after its retention "
                                          "(COURIER_OFFERS_UPLOAD_RETENTION_DAYS); start a new run.",
                                 "code": "input_removed", "details": {"run_id": 42}}}})
def resume(run_id: int) -> Response:
    run = offers_capability().submissions.resume(run_id)
    return _accepted(run_service.run_view(db_session(), run.id))
