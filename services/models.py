"""All tables. Import this module (not individual capability modules) to get the full metadata."""

from __future__ import annotations

from services.db import Base

__all__ = ["Base"]
