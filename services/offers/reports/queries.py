"""Reading recorded runs and results, with keyset pagination (stable under concurrent inserts)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.errors import InvalidRequest, NotFound
from services.offers.runs.distributed.chunks import ChunkProgress, chunk_members, chunk_progress, chunk_span
from services.offers.runs.recording import (
    MAX_ID,
    get_run,
    iter_csv,
    iter_export_rows,
    members_by_status,
    offers_recorded,
    result_record,
    run_record,
)
from services.offers.statuses import MemberStatus, RunStatus
from services.tables import OfferResult, OfferRun

# A cursor is opaque text to a client (any string is well-formed); one this API did not issue is
# refused with its own code, which the document lists among the list operations' refusals.
INVALID_CURSOR = "invalid_cursor"
_NOT_OURS = "not a cursor this API issued"


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: type) -> Any:
    if not cursor:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest("Invalid cursor.", code=INVALID_CURSOR, details={"cursor": [_NOT_OURS]}) from exc
    # An id cursor beyond what a database column holds would overflow the driver (a 500 before).
    if not isinstance(value, kind) or isinstance(value, bool) or (
            isinstance(value, int) and not 0 <= value <= MAX_ID + 1):
        raise InvalidRequest("Invalid cursor.", code=INVALID_CURSOR, details={"cursor": [_NOT_OURS]})
    return value


def live_values(session: Session, run: OfferRun) -> dict[str, Any]:
    """What the run's row does not hold yet: a running run's counts so far (the row's are written
    when it ends; REST showed ``members_scored: 0`` over 11,345 committed results) and a distributed
    run's chunks (two small aggregate queries on indexed columns)."""
    live: dict[str, Any] = {}
    if run.status == RunStatus.RUNNING:
        by_status = members_by_status(session, run.id)
        live.update(members_total=sum(by_status.values()),
                    members_scored=by_status.get(MemberStatus.SCORED, 0),
                    members_skipped=by_status.get(MemberStatus.SKIPPED, 0),
                    members_failed=by_status.get(MemberStatus.FAILED, 0),
                    offers=offers_recorded(session, run.id))
    if run.mode == "distributed":
        chunks = chunk_progress(session, run.id)
        live["chunks"] = {"total": chunks.total, "done": chunks.done, "running": chunks.running,
                          "pending": chunks.total - chunks.done - chunks.running - chunks.failed,
                          "failed": chunks.failed}
        if run.status in (RunStatus.QUEUED, RunStatus.RUNNING):
            live["progress"] = _progress(session, run, chunks)
    return live


def _progress(session: Session, run: OfferRun, chunks: ChunkProgress) -> dict[str, Any]:
    """Where a distributed run stands: its phase, chunks and members done, the pace of the chunks done
    so far (members over the span from the first chunk started to the last finished) and the time
    left at that pace."""
    run_id = run.id
    to_score = chunk_members(session, run_id)
    if run.status == RunStatus.QUEUED:  # a coordinator beats once when it takes the run (submitted.py)
        phase = "reading input" if run.heartbeat_at is not None else "waiting for a coordinator"
    else:
        phase = "scoring" if chunks.total else "reading input"
    rate = eta = None
    span = chunk_span(session, run_id)
    if span is not None and span[1] > 0:
        rate = round(span[0] / span[1], 1)
        eta = round((to_score - chunks.members_done) / rate, 1) if rate > 0 else None
    return {"phase": phase, "chunks_done": chunks.done, "chunks_total": chunks.total,
            "members_done": chunks.members_done,
            "members_to_score": to_score, "members_per_s": rate, "eta_s": eta}


def run_view(session: Session, run_id: int) -> dict[str, Any]:
    """One run's record as served: its row, and what it has done so far while it runs."""
    run = get_run(session, run_id)
    return run_record(run, live_values(session, run))


def list_runs(session: Session, limit: int, cursor: str | None) -> tuple[list[dict], str | None]:
    """Newest first; the cursor is the last id of the page."""
    before = decode_cursor(cursor, int)
    stmt = select(OfferRun).order_by(OfferRun.id.desc()).limit(limit + 1)
    if before is not None:
        stmt = stmt.where(OfferRun.id < before)
    runs = list(session.scalars(stmt))
    page, more = runs[:limit], len(runs) > limit
    return [run_record(r, live_values(session, r)) for r in page], encode_cursor(page[-1].id) if more else None


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
    return iter_csv(iter_export_rows(session, run_id))
