"""Venue preparation times: parse and import a CSV, read a snapshot, and a per-process cache.

Workers keep the mapping in memory and look at its version counter at most every
``reload_s`` seconds, so a `flask seed-venues` reaches every worker without a restart while
the request path stays free of database reads.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.data_versions import bump_version, current_version
from services.metrics import metrics
from services.tables import VenuePrepTime, utcnow

DATASET = "venue_prep_times"
MAX_VENUE_ID_LENGTH = 64


log = logging.getLogger("courier.estimate")


@dataclass(frozen=True)
class RowError:
    line: int
    problem: str


class PrepTimesFileError(Exception):
    """The file cannot be imported; ``errors`` lists every bad row with its line number."""

    def __init__(self, path: str, errors: list[RowError]) -> None:
        self.path = path
        self.errors = errors
        shown = "; ".join(f"line {e.line}: {e.problem}" for e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(f"{path}: {len(errors)} bad row(s): {shown}{more}")


@dataclass(frozen=True)
class UpsertCounts:
    inserted: int
    updated: int
    unchanged: int
    kept: tuple[str, ...] = ()  # rows that differ from the file, left as they are (not overwriting)


@dataclass(frozen=True)
class PrepTimeSnapshot:
    version: int
    times: dict[str, float] = field(default_factory=dict)

    @property
    def default(self) -> float | None:
        """Median over all known venues: what an unknown venue is assumed to need."""
        return statistics.median(self.times.values()) if self.times else None


def parse_prep_times_csv(path: str | Path) -> dict[str, float]:
    """Read ``venue_id,avg_preparation_time``; every bad row is reported, none is skipped silently."""
    path = str(path)
    errors: list[RowError] = []
    result: dict[str, float] = {}
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise PrepTimesFileError(path, [RowError(0, f"cannot open: {exc.strerror or exc}")]) from exc
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["venue_id", "avg_preparation_time"]:
            raise PrepTimesFileError(path, [RowError(1, f"header must be venue_id,avg_preparation_time, got {header}")])
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2:
                errors.append(RowError(line_no, f"expected 2 columns, got {len(row)}"))
                continue
            venue_id, raw = row[0].strip(), row[1].strip()
            if not venue_id:
                errors.append(RowError(line_no, "empty venue_id"))
                continue
            if len(venue_id) > MAX_VENUE_ID_LENGTH:
                errors.append(RowError(line_no, f"venue_id longer than {MAX_VENUE_ID_LENGTH} characters"))
                continue
            try:
                value = float(raw)
            except ValueError:
                errors.append(RowError(line_no, f"avg_preparation_time {raw!r} is not a number"))
                continue
            if not math.isfinite(value):
                errors.append(RowError(line_no, f"avg_preparation_time {raw!r} is not finite"))
            elif value < 0:
                errors.append(RowError(line_no, f"avg_preparation_time {raw!r} is negative"))
            elif venue_id in result:
                errors.append(RowError(line_no, f"venue_id {venue_id!r} appears twice"))
            else:
                result[venue_id] = value
    if errors:
        raise PrepTimesFileError(path, errors)
    return result


def upsert_prep_times(session: Session, times: dict[str, float], overwrite: bool = True) -> UpsertCounts:
    """Insert new venues; rows that differ are updated when ``overwrite``, else kept and listed
    (an operator's change must not be undone by the next deploy's seeding).  The caller commits."""
    existing = {row.venue_id: row for row in session.scalars(select(VenuePrepTime))}
    inserted = updated = unchanged = 0
    kept: list[str] = []
    now = utcnow()
    for venue_id, value in times.items():
        row = existing.get(venue_id)
        if row is None:
            session.add(VenuePrepTime(venue_id=venue_id, avg_preparation_time=value, updated_at=now))
            inserted += 1
        elif row.avg_preparation_time != value and not overwrite:
            kept.append(venue_id)
        elif row.avg_preparation_time != value:
            row.avg_preparation_time = value
            row.updated_at = now
            updated += 1
        else:
            unchanged += 1
    if inserted or updated:
        bump_version(session, DATASET)
    session.flush()
    return UpsertCounts(inserted, updated, unchanged, tuple(sorted(kept)))


def read_snapshot(session: Session) -> PrepTimeSnapshot:
    version = current_version(session, DATASET)
    rows = session.execute(select(VenuePrepTime.venue_id, VenuePrepTime.avg_preparation_time)).all()
    return PrepTimeSnapshot(version=version, times={venue_id: value for venue_id, value in rows})


class PrepTimeCache:
    """The process's copy of the mapping; refreshed when the stored version changes."""

    def __init__(self, session_factory: sessionmaker, reload_s: float) -> None:
        self._sessions = session_factory
        self._reload_s = reload_s
        self._snapshot: PrepTimeSnapshot | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    def get(self) -> PrepTimeSnapshot:
        now = time.monotonic()
        if self._snapshot is not None and now < self._next_check:
            return self._snapshot
        with self._lock:
            if self._snapshot is None or time.monotonic() >= self._next_check:
                try:
                    with self._sessions() as session:
                        version = current_version(session, DATASET)
                        if self._snapshot is None or version != self._snapshot.version:
                            self._snapshot = read_snapshot(session)
                            metrics().prep_times_version.set(self._snapshot.version)
                except SQLAlchemyError:
                    if self._snapshot is None:
                        raise  # nothing to answer from: the request gets 503 database_unavailable
                    # Estimates need no database per request: keep answering from the copy in
                    # memory and look again after the reload interval.
                    log.warning("preparation times not reloaded: database unavailable")
                self._next_check = time.monotonic() + self._reload_s
        return self._snapshot

    def invalidate(self) -> None:
        self._next_check = 0.0
