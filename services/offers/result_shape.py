"""The shape of one member's result, declared once.

Every other view of a result is derived from ``RESULT_FIELDS``: the export columns (CSV, JSON
lines), the Parquet types, the REST schema (``blueprints/offers.py``) and the record the REST API
returns. The ORM table (``services/tables.py``, changed only by migrations) is checked against it
by ``tests/services/test_result_shape.py``, so a field added here and not there fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.offers.features import STANDARD_FEATURES


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
