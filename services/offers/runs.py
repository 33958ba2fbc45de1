"""Reading recorded runs and results, with keyset pagination (stable under concurrent inserts)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.errors import InvalidRequest, NotFound
from services.offers.recording import iter_csv, iter_results, result_record, run_record
from services.tables import OfferResult, OfferRun


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: type) -> Any:
    if not cursor:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest("Invalid cursor.", details={"cursor": ["not a cursor this API issued"]}) from exc
    # An id cursor beyond what a database column holds would overflow the driver (a 500 before).
    if not isinstance(value, kind) or isinstance(value, bool) or (
            isinstance(value, int) and not 0 <= value <= MAX_ID + 1):
        raise InvalidRequest("Invalid cursor.", details={"cursor": ["not a cursor this API issued"]})
    return value


MAX_ID = 2**63 - 1  # largest id any supported database can hold; larger ones cannot exist


def get_run(session: Session, run_id: int) -> OfferRun:
    run = session.get(OfferRun, run_id) if 0 < run_id <= MAX_ID else None
    if run is None:
        raise NotFound(f"No offer run {run_id}.", code="run_not_found", details={"run_id": run_id})
    return run


def list_runs(session: Session, limit: int, cursor: str | None) -> tuple[list[dict], str | None]:
    """Newest first; the cursor is the last id of the page."""
    before = decode_cursor(cursor, int)
    stmt = select(OfferRun).order_by(OfferRun.id.desc()).limit(limit + 1)
    if before is not None:
        stmt = stmt.where(OfferRun.id < before)
    runs = list(session.scalars(stmt))
    page, more = runs[:limit], len(runs) > limit
    return [run_record(r) for r in page], encode_cursor(page[-1].id) if more else None


def list_results(session: Session, run_id: int, *, status: str | None, offer: str | None, limit: int,
                 cursor: str | None) -> tuple[list[dict], str | None]:
    """A run's results in member order; the cursor is the last member id of the page."""
    get_run(session, run_id)
    after = decode_cursor(cursor, str)
    stmt = select(OfferResult).where(OfferResult.run_id == run_id).order_by(OfferResult.member_id).limit(limit + 1)
    if status:
        stmt = stmt.where(OfferResult.status == status)
    if offer:
        stmt = stmt.where(OfferResult.offer == offer)
    if after is not None:
        stmt = stmt.where(OfferResult.member_id > after)
    rows = list(session.scalars(stmt))
    page, more = rows[:limit], len(rows) > limit
    return [result_record(r) for r in page], encode_cursor(page[-1].member_id) if more else None


def get_result(session: Session, run_id: int, member_id: str) -> dict:
    get_run(session, run_id)
    result = session.scalars(select(OfferResult).where(OfferResult.run_id == run_id,
                                                      OfferResult.member_id == member_id)).one_or_none()
    if result is None:
        raise NotFound(f"Run {run_id} has no result for member {member_id!r}.", code="result_not_found",
                       details={"run_id": run_id, "member_id": member_id})
    return result_record(result)


def export_csv(session: Session, run_id: int) -> Iterator[str]:
    """The run's results as CSV chunks, read from the database in batches (never all in memory)."""
    get_run(session, run_id)
    return iter_csv(iter_results(session, run_id))
