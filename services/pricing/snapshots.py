"""Bundled venue snapshots: ``<slug>.static.json`` + ``<slug>.dynamic.json`` pairs in one folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.pricing.venue_data import VenueData, VenueDataError, parse_dynamic, parse_static


@dataclass(frozen=True)
class SnapshotProblem:
    file: str
    problem: str


class SnapshotError(Exception):
    def __init__(self, problems: list[SnapshotProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.file}: {p.problem}" for p in problems))


def _read(path: Path, parse, problems: list[SnapshotProblem]):
    try:
        return parse(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        problems.append(SnapshotProblem(str(path), f"cannot read ({exc.strerror or exc})"))
    except ValueError as exc:
        problems.append(SnapshotProblem(str(path), f"not valid JSON ({exc})"))
    except VenueDataError as exc:
        problems.append(SnapshotProblem(str(path), str(exc)))
    return None


def load_snapshots(folder: str | Path, fetched_at: datetime | None = None) -> list[VenueData]:
    """Parse every pair in ``folder``; raise SnapshotError listing every bad or unpaired file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SnapshotError([SnapshotProblem(str(folder), "not a folder")])
    fetched_at = fetched_at or datetime.now(UTC)
    problems: list[SnapshotProblem] = []
    slugs = sorted({p.name.rsplit(".", 2)[0] for p in folder.glob("*.json")
                    if p.name.endswith((".static.json", ".dynamic.json"))})
    venues = []
    for slug in slugs:
        static_path, dynamic_path = folder / f"{slug}.static.json", folder / f"{slug}.dynamic.json"
        missing = [p for p in (static_path, dynamic_path) if not p.exists()]
        for path in missing:
            problems.append(SnapshotProblem(str(path), "missing: each venue needs both halves"))
        if missing:
            continue
        static = _read(static_path, parse_static, problems)
        dynamic = _read(dynamic_path, parse_dynamic, problems)
        if static is not None and dynamic is not None:
            venues.append(VenueData(slug, static, fetched_at, dynamic, fetched_at))
    if problems:
        raise SnapshotError(problems)
    if not venues:
        raise SnapshotError([SnapshotProblem(str(folder), "no <slug>.static.json / <slug>.dynamic.json pairs")])
    return venues
