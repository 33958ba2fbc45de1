"""Version counters of reference data sets (see ``models.DataVersion``)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.tables import DataVersion, utcnow


def current_version(session: Session, name: str) -> int:
    row = session.get(DataVersion, name)
    return row.version if row is not None else 0


def bump_version(session: Session, name: str) -> int:
    row = session.get(DataVersion, name, with_for_update=True)
    if row is None:
        row = DataVersion(name=name, version=0)
        session.add(row)
    row.version += 1
    row.updated_at = utcnow()
    session.flush()
    return row.version
