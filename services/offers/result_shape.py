"""The shapes of a member's result and of a run record, each declared once.

Every other view of a result is derived from ``RESULT_FIELDS``: the export columns (CSV, JSON
lines), the Parquet types, the REST schema (``blueprints/offers.py``) and the record the REST API
returns. The ORM table (``services/tables.py``, changed only by migrations) is checked against it
by ``tests/services/offers/test_result_shape.py``, so a field added here and not there fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import PurePath
from typing import Any

from services.offers.features.definitions import STANDARD_FEATURES


@dataclass(frozen=True)
class ResultField:
    name: str  # as exported and served (features in UPPER_CASE, like the partner's inputs)
    kind: type  # str, float or int
    nullable: bool = True
    description: str = ""

    @property
    def column(self) -> str:
        """Its column in ``offer_results``."""
        return self.name.lower()


RESULT_FIELDS: tuple[ResultField, ...] = (
    ResultField("member_id", str, nullable=False),
    *(ResultField(name, int if name == "DAYS_SINCE_LAST_TRANSACTION" else float, description="feature")
      for name in STANDARD_FEATURES),
    ResultField("ats_prediction", float, description="ATS model answer"),
    ResultField("resp_prediction", float, description="RESP model answer"),
    ResultField("offer", str, description="the partner's offer (scored members)"),
    ResultField("status", str, nullable=False, description="scored, skipped or failed"),
    ResultField("error", str, description="why a member was skipped or failed (step: code: message)"),
    ResultField("ats_ms", float, description="ATS call latency"),
    ResultField("resp_ms", float, description="RESP call latency"),
    ResultField("offer_ms", float, description="offer call latency"),
)

EXPORT_COLUMNS: list[str] = [f.name for f in RESULT_FIELDS]
# UPPER_CASE feature name -> column of offer_results
FEATURE_COLUMNS: dict[str, str] = {f.name: f.column for f in RESULT_FIELDS if f.name in STANDARD_FEATURES}


def polars_schema() -> dict[str, Any]:
    """Parquet column types, in export order."""
    import polars as pl

    types = {str: pl.String, float: pl.Float64, int: pl.Int64}
    return {f.name: types[f.kind] for f in RESULT_FIELDS}


@dataclass(frozen=True)
class RunField:
    """One key of a run record, as the REST API, ``summary.json`` and the report show it."""

    name: str  # also its column in offer_runs, unless derived
    kind: type  # int, str, date, datetime or dict (JSON)
    nullable: bool = False
    description: str = ""
    derived: bool = False  # computed when the record is read, not a column


RUN_FIELDS: tuple[RunField, ...] = (
    RunField("id", int),
    RunField("partner", str),
    RunField("input_file", str, derived=True,
             description="the input's file name (an upload's own name, when it had one); its folder on the server "
                         "is not shown (with input_sha256, what a client needs to tell inputs apart)"),
    RunField("input_sha256", str),
    RunField("as_of", date, description="the date DAYS_SINCE_LAST_TRANSACTION counts to"),
    RunField("status", str, description="queued (submitted, waiting for a coordinator worker), running, succeeded, "
                                        "completed_with_failures, failed, interrupted; "
                                        "abandoned: was running, but its process stopped beating (killed); resume it."),
    RunField("started_at", datetime),
    RunField("finished_at", datetime, nullable=True),
    RunField("concurrency", int),
    RunField("mode", str, description="local (one process) or distributed (chunks on Celery workers)"),
    RunField("chunk_size", int, nullable=True, description="members per chunk (distributed runs)"),
    RunField("chunks", dict, nullable=True, derived=True,
             description="distributed runs: chunks total, done, running, pending, failed (live while running)"),
    RunField("rows_read", int),
    RunField("rows_rejected", int),
    RunField("members_total", int, description="members recorded (so far, while running), and below by outcome"),
    RunField("members_scored", int),
    RunField("members_skipped", int),
    RunField("members_failed", int),
    RunField("offers", dict, description="members per offer"),
    RunField("rejected", dict, description="rejected input rows: total, by_reason, first rows"),
    RunField("step_metrics", dict, description="per step: items, seconds, items_per_s, p50/p95/p99 ms; retries"),
    RunField("error", str, nullable=True),
    RunField("heartbeat_at", datetime, nullable=True,
             description="Last sign of life of the process running it (every 5 s while running)."),
    RunField("source", str, description="cli (`flask run-offers`) or api (REST or the web view)"),
    RunField("input_bytes", int, nullable=True, description="the uploaded input's size (runs started over the API)"),
    RunField("cancel_requested_at", datetime, nullable=True,
             description="when a cancel was asked for; the run ends `interrupted` within a second or two"),
    RunField("progress", dict, nullable=True, derived=True,
             description="distributed runs while queued or running: phase (waiting for a coordinator, reading "
                         "input, scoring), chunks_done, chunks_total, members_done, members_to_score, members_per_s "
                         "and eta_s (null until a chunk is done)"),
)


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    # SQLite returns naive datetimes for timezone-aware columns; they were written as UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def run_values(run: Any, status: str, live: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's record from its row: RUN_FIELDS in order, dates as ISO text, ``status`` as shown;
    ``live`` values (counts so far of a running run, chunk counts) replace the row's."""
    live = live or {}
    record: dict[str, Any] = {}
    for field in RUN_FIELDS:
        if field.name in live:
            value: Any = live[field.name]
        elif field.name == "input_file":
            value = getattr(run, "input_name", None) or PurePath(run.input_path).name
        elif field.derived:
            value = None
        else:
            value = status if field.name == "status" else getattr(run, field.name)
        if field.kind is datetime:
            value = iso(value)
        elif field.kind is date and value is not None:
            value = value.isoformat()
        record[field.name] = value
    return record
