"""Run records: create, resume, write results in batches, finalise, and read back for export."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Table, delete, func, insert, select
from sqlalchemy.orm import Session

from services.offers.features.definitions import STANDARD_FEATURES
from services.offers.result_shape import EXPORT_COLUMNS, FEATURE_COLUMNS, RESULT_FIELDS, polars_schema, run_values
from services.offers.runs.lease import shown_status
from services.offers.statuses import MemberStatus, RunStatus
from services.tables import OfferResult, OfferRun, utcnow


@dataclass
class MemberOutcome:
    member_id: str
    status: str  # scored / skipped / failed
    features: dict[str, Any] | None = None
    ats_prediction: float | None = None
    resp_prediction: float | None = None
    offer: str | None = None
    error: str | None = None
    ats_ms: float | None = None
    resp_ms: float | None = None
    offer_ms: float | None = None

    def row(self, run_id: int) -> dict[str, Any]:
        features = self.features or {}
        extra = {k: v for k, v in features.items() if k not in FEATURE_COLUMNS}
        return {
            "run_id": run_id, "member_id": self.member_id,
            **{column: features.get(name) for name, column in FEATURE_COLUMNS.items()},
            "extra_features": extra or None,
            "ats_prediction": self.ats_prediction, "resp_prediction": self.resp_prediction, "offer": self.offer,
            "status": str(self.status), "error": self.error,
            "ats_ms": self.ats_ms, "resp_ms": self.resp_ms, "offer_ms": self.offer_ms,
        }


def create_run(session: Session, *, partner: str, input_path: str, input_sha256: str, as_of: date,
               concurrency: int, owner: str | None = None) -> OfferRun:
    run = OfferRun(partner=partner, input_path=input_path, input_sha256=input_sha256, as_of=as_of,
                   status=RunStatus.RUNNING.value, concurrency=concurrency, offers={}, rejected={}, step_metrics={},
                   lease_owner=owner, heartbeat_at=utcnow())
    session.add(run)
    session.flush()
    return run


def recorded_members(session: Session, run_id: int) -> set[str]:
    return set(session.scalars(select(OfferResult.member_id).where(OfferResult.run_id == run_id)))


def forget_failed(session: Session, run_id: int) -> int:
    """Drop a run's failed results so that resuming retries those members (and never duplicates them)."""
    result = session.execute(delete(OfferResult).where(OfferResult.run_id == run_id,
                                                       OfferResult.status == MemberStatus.FAILED))
    return cast(CursorResult, result).rowcount or 0


_INSERT_CACHE: dict[str, tuple[str, tuple[str, ...] | None]] = {}


def _compiled_insert(dialect) -> tuple[str, tuple[str, ...] | None]:
    """The INSERT of every result column in the dialect's own parameter style (cached per dialect)."""
    cached = _INSERT_CACHE.get(dialect.name)
    if cached is None:
        table = cast(Table, OfferResult.__table__)
        columns = [c.name for c in table.columns if c.name != "id"]
        compiled = insert(table).compile(dialect=dialect, column_keys=columns)
        cached = (compiled.string, tuple(compiled.positiontup or ()) if compiled.positional else None)
        _INSERT_CACHE[dialect.name] = cached
    return cached


def insert_outcomes(session: Session, run_id: int, outcomes: list[MemberOutcome]) -> None:
    """One executemany straight to the driver.

    Neither the ORM nor Core's parameter processing: building and binding 1,000 plain rows through
    ``session.execute(insert(table), rows)`` was ~15% of the whole client's CPU at 90k members
    (py-spy); these rows need no conversion but the one JSON column, encoded here.
    """
    if not outcomes:
        return
    sql, order = _compiled_insert(session.get_bind().dialect)
    rows = [o.row(run_id) for o in outcomes]
    for row in rows:
        if row["extra_features"] is not None:
            row["extra_features"] = json.dumps(row["extra_features"])
    params = [tuple(row[key] for key in order) for row in rows] if order is not None else rows
    session.connection().exec_driver_sql(sql, params)


RUN_STATUSES = tuple(s.value for s in RunStatus if s is not RunStatus.ABANDONED)


def members_by_status(session: Session, run_id: int) -> dict[str, int]:
    """A run's recorded members by status (scored, skipped, failed)."""
    return dict(session.execute(select(OfferResult.status, func.count()).where(OfferResult.run_id == run_id)
                                .group_by(OfferResult.status)).all())


def offers_recorded(session: Session, run_id: int) -> dict[str, int]:
    """A run's recorded members per offer, by offer name."""
    counts: dict[str, int] = dict(session.execute(select(OfferResult.offer, func.count()).where(  # type: ignore[arg-type]
        OfferResult.run_id == run_id, OfferResult.offer.is_not(None)).group_by(OfferResult.offer)).all())
    return dict(sorted(counts.items()))


def finalise_run(session: Session, run: OfferRun, *, status: str | None, rows_read: int, rejected: dict,
                 step_metrics: dict, error: str | None = None, timeline: list | None = None) -> OfferRun:
    """Counts come from the stored results, so a resumed run counts every member exactly once.

    ``status`` None means the run went through: ``succeeded`` if no member failed, else
    ``completed_with_failures``.
    """
    by_status = members_by_status(session, run.id)
    if status is None:
        status = RunStatus.COMPLETED_WITH_FAILURES if by_status.get(MemberStatus.FAILED, 0) else RunStatus.SUCCEEDED
    run.status = str(status)  # the plain word: drivers may dump an Enum by its name
    run.finished_at = utcnow()
    run.rows_read = rows_read
    run.rows_rejected = int(rejected.get("total", 0))
    run.rejected = rejected
    run.members_scored = by_status.get(MemberStatus.SCORED, 0)
    run.members_skipped = by_status.get(MemberStatus.SKIPPED, 0)
    run.members_failed = by_status.get(MemberStatus.FAILED, 0)
    run.members_total = sum(by_status.values())
    run.offers = offers_recorded(session, run.id)
    run.step_metrics = step_metrics
    run.error = error
    if timeline is not None:
        run.timeline = timeline
    session.flush()
    return run


def run_record(run: OfferRun, live: dict[str, Any] | None = None) -> dict[str, Any]:
    return run_values(run, shown_status(run), live)


_AFTER_FEATURES = RESULT_FIELDS[len(STANDARD_FEATURES) + 1:]


def result_record(result: OfferResult) -> dict[str, Any]:
    """One result as served and exported: RESULT_FIELDS in order, registry features beyond the
    standard eight after the standard ones."""
    record: dict[str, Any] = {"member_id": result.member_id}
    for name, column in FEATURE_COLUMNS.items():
        record[name] = getattr(result, column)
    if result.extra_features:
        record.update(result.extra_features)
    for field in _AFTER_FEATURES:
        record[field.name] = getattr(result, field.column)
    return record


def iter_results(session: Session, run_id: int, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Every result of a run in member order, fetched in batches (never the whole run in memory)."""
    stmt = (select(OfferResult).where(OfferResult.run_id == run_id).order_by(OfferResult.member_id)
            .execution_options(yield_per=batch))
    for result in session.scalars(stmt):
        yield result_record(result)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return value


def iter_csv(records: Iterator[dict[str, Any]]) -> Iterator[str]:
    """CSV text chunk by chunk (header first) with exactly EXPORT_COLUMNS."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for record in records:
        writer.writerow([_csv_value(record.get(c)) for c in EXPORT_COLUMNS])
        count += 1
        if count % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")


def write_output(session: Session, run: OfferRun, path: str | Path) -> Path:
    """Per-member results as CSV (.csv), JSON lines (.jsonl) or Parquet (.parquet), plus a summary."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"{path.name}: unsupported output format; use one of {', '.join(OUTPUT_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import polars as pl

        frame = pl.DataFrame([{c: r.get(c) for c in EXPORT_COLUMNS} for r in iter_results(session, run.id)],
                             schema=polars_schema())
        frame.write_parquet(path)
    elif suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as handle:
            for record in iter_results(session, run.id):
                handle.write(json.dumps({c: record.get(c) for c in EXPORT_COLUMNS}) + "\n")
    else:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            for chunk in iter_csv(iter_results(session, run.id)):
                handle.write(chunk)
    summary = Path(str(path) + ".summary.json")
    summary.write_text(json.dumps(run_record(run), indent=2))
    return summary
