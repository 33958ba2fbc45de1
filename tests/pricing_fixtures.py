"""Helpers for pricing tests: bundled venue documents and responses registrations."""

import json

from config import DATA_DIR

SLUGS = ["berlin", "helsinki", "stockholm", "tallinn", "tokyo"]


def doc(slug: str, half: str) -> dict:
    return json.loads((DATA_DIR / "venues" / f"home-assignment-venue-{slug}.{half}.json").read_text())


def register_venue(mock, base: str, slug: str, **kwargs):
    """Register both halves of a bundled venue under ``slug`` (short name: berlin, helsinki...)."""
    full = f"home-assignment-venue-{slug}"
    static = mock.get(f"{base}/venues/{full}/static", json=doc(slug, "static"), **kwargs)
    dynamic = mock.get(f"{base}/venues/{full}/dynamic", json=doc(slug, "dynamic"), **kwargs)
    return static, dynamic
