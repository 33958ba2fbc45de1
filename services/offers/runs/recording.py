"""Run records: create, resume, write results in batches, finalise, and read back for export."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Table, delete, func, insert, select
from sqlalchemy.orm import Session

from services.errors import NotFound
from services.offers.features.definitions import STANDARD_FEATURES
from services.offers.result_shape import EXPORT_COLUMNS, FEATURE_COLUMNS, RESULT_FIELDS, polars_schema, run_values
from services.offers.runs.lease import shown_status
from services.offers.statuses import MemberStatus, RunStatus
from services.tables import OfferResult, OfferRun, utcnow

log = logging.getLogger("courier.offers")

MAX_ID = 2**63 - 1  # largest id any supported database can hold; larger ones cannot exist


def get_run(session: Session, run_id: int) -> OfferRun:
    """The run ``run_id``; NotFound (404 run_not_found) when there is none. An id beyond what a
    database column holds would overflow the driver: no such run either."""
    run = session.get(OfferRun, run_id) if 0 < run_id <= MAX_ID else None
    if run is None:
        raise NotFound(f"No offer run {run_id}.", code="run_not_found", details={"run_id": run_id})
    return run


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

    def values(self, run_id: int) -> tuple[Any, ...]:
        """The result row, in ``RESULT_COLUMNS`` order (``extra_features`` a dict, or None)."""
        features = self.features or {}
        extra = {k: v for k, v in features.items() if k not in FEATURE_COLUMNS} if features else None
        return (run_id, self.member_id, *[features.get(name) for name in FEATURE_COLUMNS], extra or None,
                self.ats_prediction, self.resp_prediction, self.offer, str(self.status), self.error,
                self.ats_ms, self.resp_ms, self.offer_ms)


# Every column of offer_results but its id, in the order ``MemberOutcome.values`` gives them.
RESULT_COLUMNS: tuple[str, ...] = ("run_id", "member_id", *FEATURE_COLUMNS.values(), "extra_features",
                                   "ats_prediction", "resp_prediction", "offer", "status", "error",
                                   "ats_ms", "resp_ms", "offer_ms")
_EXTRA = RESULT_COLUMNS.index("extra_features")


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


_INSERT_CACHE: dict[str, str] = {}
_COPY_RESULTS = f"COPY {OfferResult.__tablename__} ({', '.join(RESULT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def _copy_types() -> list[str]:
    """PostgreSQL's name for each column's type, as binary COPY needs them (from the ORM table)."""
    from sqlalchemy import JSON, Float, Integer, String

    table = cast(Table, OfferResult.__table__)
    kinds = ((JSON, "json"), (Float, "float8"), (Integer, "int4"), (String, "text"))  # Text is a String
    return [next(name for kind, name in kinds if isinstance(table.c[column].type, kind)) for column in RESULT_COLUMNS]


def _compiled_insert(dialect) -> str:
    """The INSERT of every result column in the dialect's own (positional) parameter style."""
    cached = _INSERT_CACHE.get(dialect.name)
    if cached is None:
        table = cast(Table, OfferResult.__table__)
        compiled = insert(table).compile(dialect=dialect, column_keys=list(RESULT_COLUMNS))
        assert compiled.positional and tuple(compiled.positiontup or ()) == RESULT_COLUMNS, "a positional dialect"
        cached = _INSERT_CACHE[dialect.name] = compiled.string
    return cached


def insert_outcomes(session: Session, run_id: int, outcomes: list[MemberOutcome]) -> list[tuple]:
    """Straight to the driver: binary ``COPY`` on PostgreSQL (psycopg), one executemany elsewhere.

    Neither the ORM nor Core's parameter processing: building and binding 1,000 plain rows through
    ``session.execute(insert(table), rows)`` was ~15% of the whole client's CPU at 90k members
    (py-spy). On PostgreSQL, ``COPY`` records 5,000 results in ~45 ms where the executemany took
    ~100 ms (bench/bench_chunk_io.py); what is left is the server's: the table's indexes and the
    foreign key (a temporary table without them takes 6 ms).

    Returns the rows as stored (``RESULT_COLUMNS`` order, ``extra_features`` as JSON text), for
    :class:`RecordedResults`.
    """
    if not outcomes:
        return []
    connection = session.connection()
    values = [outcome.values(run_id) for outcome in outcomes]
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(_COPY_RESULTS) as copy:
            copy.set_types(_copy_types())
            for row in values:
                copy.write_row(row)  # extra features as a dict: psycopg's json dumper encodes it
        return [_as_stored(row) for row in values]
    rows = [_as_stored(row) for row in values]
    connection.exec_driver_sql(_compiled_insert(connection.dialect), rows)
    return rows


def _as_stored(values: tuple) -> tuple:
    """A result row with its extra features as the JSON text the column stores."""
    if values[_EXTRA] is None:
        return values
    return (*values[:_EXTRA], json.dumps(values[_EXTRA]), *values[_EXTRA + 1:])


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


# OWASP's CSV injection guidance: a cell that starts with =, +, -, @, a tab or a carriage return is
# read by a spreadsheet as a formula (`=cmd|' /C calc'!A0`, `+SUM(1+1)`, `-2+3`, `@HYPERLINK(...)`)
# or shifts the cell's start; a leading single quote makes it text. Only text cells: a number,
# negative or not, is a number. JSON lines and Parquet keep the raw value.
_FORMULA_START = r"^[=+\-@\t\r]"


def iter_export_rows(session: Session, run_id: int, batch: int = 5000) -> Iterator[tuple]:
    """Every result of a run as a tuple in EXPORT_COLUMNS order, member order, streamed in batches.

    Plain rows from the table, not ORM objects: reading 100k results back as ``OfferResult``
    objects and record dicts and writing them as CSV took 2.9 s (SQLite, 34k rows/s); fetching them
    as plain rows takes 0.27 s.
    """
    table = OfferResult.__table__
    stmt = (select(*[table.c[field.column] for field in RESULT_FIELDS]).where(table.c.run_id == run_id)
            .order_by(table.c.member_id).execution_options(yield_per=batch, stream_results=True))
    for partition in session.execute(stmt).partitions():
        yield from partition


class RecordedResults:
    """The results one process recorded for a run, kept as they were inserted, so ``--output``
    writes them without reading the run back.

    Reading 100k results back and building their frames took ~0.8 s at the end of a 100k-member
    run; from the kept rows it takes ~0.3 s. The writer keeps its own insert rows (no work on its
    thread: building frames there held the GIL and slowed the scoring loop by as much as it saved),
    at ~800 bytes a row: a 100k-member run peaked at 315 MB instead of 234-240 MB. Bounded: past
    ``max_rows`` it keeps nothing more and the output is read back as before, so larger runs keep
    their flat memory. Only a run this process recorded from its first result can be complete: a
    resumed run's earlier results are only in the database (``complete_for`` checks the count).

    The kept rows sorted by polars come in the order the database reads them back: member ids
    compare by their bytes on SQLite and on PostgreSQL (``COLLATE "C"``, migration 0014).
    """

    def __init__(self, max_rows: int = 150_000) -> None:
        self.max_rows = max_rows
        self.rows = 0
        self.overflowed = False  # more rows than max_rows
        self._handed_out = False
        self._batches: list[list[tuple]] = []

    def keep(self, inserted: list[tuple]) -> None:
        """Keep a committed batch's rows (``insert_outcomes``' answer)."""
        if self.overflowed:
            return
        if self.rows + len(inserted) > self.max_rows:
            self.overflowed, self._batches = True, []
            return
        self._batches.append(inserted)
        self.rows += len(inserted)

    def complete_for(self, run: OfferRun) -> bool:
        return not self.overflowed and not self._handed_out and self.rows == run.members_total

    def frame(self):
        """Every kept result in export columns, in member order (the database's ``ORDER BY member_id``:
        both compare UTF-8 bytes)."""
        import polars as pl

        exported = polars_schema()
        types = {field.column: exported[field.name] for field in RESULT_FIELDS}
        schema = {column: types.get(column, pl.String if column == "extra_features" else pl.Int64)
                  for column in RESULT_COLUMNS}
        frames = []
        while self._batches:  # each batch's tuples freed as soon as its frame is built
            frames.append(pl.DataFrame(self._batches.pop(), schema=schema, orient="row"))
        self._handed_out = True  # the tuples are gone: a second frame would be empty
        rows = pl.concat(frames) if frames else pl.DataFrame(schema=schema)
        return rows.select([pl.col(field.column).alias(field.name) for field in RESULT_FIELDS]).sort("member_id")


# The columns that hold text: the only cells neutralised.
_TEXT_COLUMNS = tuple(field.name for field in RESULT_FIELDS if field.kind is str)
_CSV_BATCH = 20_000  # rows formatted at a time: bounded memory, and polars' speed per batch


def iter_csv(rows: Iterable[tuple]) -> Iterator[str]:
    """CSV text chunk by chunk (header first) with exactly EXPORT_COLUMNS, from rows in that order.

    Text cells a spreadsheet would run as a formula start with a single quote (``_FORMULA_START``).
    Lines end with CRLF (RFC 4180; with LF the csv module left a value holding a bare CR unquoted,
    and readers split the row). polars formats the batches: the csv module spent ~6.8 us a row, so
    writing 100k results from plain rows ran at ~100k rows/s; polars ~1.9 us a row. Floats keep
    their shortest exact form (0.0000687352710133543 where Python's repr says 6.87352710133543e-05:
    the same number).
    """
    import itertools

    import polars as pl

    schema = polars_schema()

    def frames() -> Iterator[pl.DataFrame]:
        remaining = iter(rows)
        while True:
            batch = list(itertools.islice(remaining, _CSV_BATCH))
            yield pl.DataFrame(batch, schema=schema, orient="row")
            if len(batch) < _CSV_BATCH:
                return

    yield from csv_chunks(frames())


def csv_chunks(frames: Iterable) -> Iterator[str]:
    """CSV text of frames in EXPORT_COLUMNS, header first, as ``iter_csv`` says (at least one frame:
    an empty one gives the header alone)."""
    import polars as pl

    fixes = [pl.when(pl.col(name).str.contains(_FORMULA_START)).then(pl.lit("'") + pl.col(name))
             .otherwise(pl.col(name)).alias(name) for name in _TEXT_COLUMNS]
    header = True
    for frame in frames:
        if not frame.height and not header:
            continue
        yield frame.with_columns(fixes).write_csv(include_header=header, line_terminator="\r\n")
        header = False


OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")


def write_output(session: Session, run: OfferRun, path: str | Path, recorded: RecordedResults | None = None) -> Path:
    """Per-member results as CSV (.csv), JSON lines (.jsonl) or Parquet (.parquet), plus a summary.

    ``recorded``: the results as this process recorded them; used instead of reading the run back
    when they are all of the run's results.
    """
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"{path.name}: unsupported output format; use one of {', '.join(OUTPUT_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    kept = None
    if recorded is not None and recorded.complete_for(run):
        try:
            kept = recorded.frame()
        except Exception:  # noqa: BLE001 - a value polars will not take: the database has them all
            log.warning("could not write the output from the recorded results; reading them back", exc_info=True)
    rows = kept.iter_rows() if kept is not None else iter_export_rows(session, run.id)
    if suffix == ".parquet":
        import polars as pl

        frame = kept if kept is not None else pl.DataFrame(list(rows), schema=polars_schema(), orient="row")
        frame.write_parquet(path)
    elif suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(dict(zip(EXPORT_COLUMNS, row, strict=True))) + "\n")
    else:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            for chunk in (csv_chunks([kept]) if kept is not None else iter_csv(rows)):
                handle.write(chunk)
    summary = Path(str(path) + ".summary.json")
    summary.write_text(json.dumps(run_record(run), indent=2))
    return summary
