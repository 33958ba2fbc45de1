"""What an offers run report shows, gathered from the database in bounded memory.

One aggregate query finds each value's range, then one streamed pass over the run's results
(``yield_per``) fills fixed-edge histograms, so a ten-million-member run costs the same memory as
a thousand-member one. The figures in the tables come from the run record itself, so the report
and ``GET /api/v1/offer-runs/<id>`` can never disagree.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.offers.features.definitions import STANDARD_FEATURES
from services.offers.reports.queries import get_run
from services.offers.result_shape import FEATURE_COLUMNS
from services.offers.runs.recording import run_record
from services.offers.statuses import MemberStatus
from services.tables import OfferResult

PARTNER_CALLS = ("ats", "resp", "offer")  # the per-member latency columns <step>_ms
HISTOGRAM_BINS = 30
STREAM_BATCH = 10_000  # rows per fetch of the streamed pass: ~3 MB of tuples
MAX_OFFER_GROUPS = 12  # feature distributions per offer; more offers than this are grouped as "other"


@dataclass(frozen=True)
class Histogram:
    """Counts between consecutive ``edges`` (len(edges) == len(counts) + 1)."""

    edges: list[float]
    counts: list[int]

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass
class RunReportData:
    run: dict[str, Any]  # the run record, exactly as the REST API shows it
    timeline: list[list[float]]  # [[seconds, members recorded], ...] of the latest attempt
    call_latency_ms: dict[str, Histogram]  # partner call -> histogram of per-member milliseconds (log bins)
    failures: dict[str, int]  # "step: code" -> failed members
    features_by_offer: dict[str, dict[str, Histogram]] = field(default_factory=dict)  # feature -> offer -> hist
    mode: str = "local"  # "local", or "distributed (chunks of N)"
    timeline_recorded: bool = True  # False: a run from before migration 0008, which kept no timeline


def failure_reason(error: str | None) -> str:
    """``"ats: upstream_bad_status: HTTP 500 ..."`` -> ``"ats: upstream_bad_status"`` (bounded set)."""
    if not error:
        return "unknown"
    return ": ".join(part.strip() for part in error.split(":", 2)[:2])


def _log_edges(low: float | None, high: float | None) -> np.ndarray | None:
    if low is None or high is None:
        return None
    low = max(float(low), 1e-3)  # a 0 ms call (clock resolution) lands in the first bin
    high = max(float(high), low)
    if high < low * 1.5:  # (nearly) all equal: a spike in a 1.5x window, not one bar filling the chart
        centre = math.sqrt(low * high)
        low, high = centre / 1.25, centre * 1.25
    return np.geomspace(low, high * 1.0001, HISTOGRAM_BINS + 1)


def _linear_edges(low: float | None, high: float | None) -> np.ndarray | None:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return None
    low, high = float(low), float(high)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, HISTOGRAM_BINS + 1)


def _ranges(session: Session, run_id: int) -> dict[str, tuple[float | None, float | None]]:
    columns = [*(f"{call}_ms" for call in PARTNER_CALLS), *FEATURE_COLUMNS.values()]
    bounds = []
    for name in columns:
        column = getattr(OfferResult, name)
        bounds += [func.min(column), func.max(column)]
    row = session.execute(select(*bounds).where(OfferResult.run_id == run_id)).one()
    return {name: (row[2 * i], row[2 * i + 1]) for i, name in enumerate(columns)}


def _bin(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    values = values[~np.isnan(values)]
    # Clip into the outer bins: the edges came from the same column's min and max.
    return np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0]


def collect_report(session: Session, run_id: int) -> RunReportData:
    """Everything the report draws, for run ``run_id`` (NotFound if there is none)."""
    run = get_run(session, run_id)
    ranges = _ranges(session, run_id)
    # Only values that exist get edges (a run without scored members has no latencies at all).
    call_edges = {call: e for call in PARTNER_CALLS if (e := _log_edges(*ranges[f"{call}_ms"])) is not None}
    feature_edges = {name: e for name in STANDARD_FEATURES
                     if (e := _linear_edges(*ranges[FEATURE_COLUMNS[name]])) is not None}
    call_counts = {call: np.zeros(HISTOGRAM_BINS, dtype=np.int64) for call in call_edges}
    feature_counts: dict[str, dict[str, np.ndarray]] = {name: {} for name in feature_edges}
    failures: Counter[str] = Counter()
    largest = set(sorted(run.offers, key=lambda o: (-run.offers[o], o))[:MAX_OFFER_GROUPS])

    feature_cols = [getattr(OfferResult, FEATURE_COLUMNS[name]) for name in STANDARD_FEATURES]
    stmt = (select(OfferResult.status, OfferResult.error, OfferResult.offer,
                   *(getattr(OfferResult, f"{call}_ms") for call in PARTNER_CALLS), *feature_cols)
            .where(OfferResult.run_id == run_id).execution_options(yield_per=STREAM_BATCH))
    result = session.execute(stmt)
    for rows in result.partitions():
        for status, error, *_ in rows:
            if status == MemberStatus.FAILED:
                failures[failure_reason(error)] += 1
        numbers = np.array([row[3:] for row in rows], dtype=float)  # None -> nan
        for i, call in enumerate(PARTNER_CALLS):
            if call in call_counts:
                call_counts[call] += _bin(numbers[:, i], call_edges[call])
        offers = np.array([row[2] or "" for row in rows], dtype=object)
        for offer in {o for o in offers if o}:
            group = offer if offer in largest else "other"
            chosen = numbers[offers == offer]
            for j, name in enumerate(STANDARD_FEATURES):
                if name in feature_counts:
                    counts = feature_counts[name].setdefault(group, np.zeros(HISTOGRAM_BINS, dtype=np.int64))
                    counts += _bin(chosen[:, len(PARTNER_CALLS) + j], feature_edges[name])

    return RunReportData(
        run=run_record(run),
        mode=run.mode if run.mode != "distributed" else f"distributed (chunks of {run.chunk_size:,})",
        timeline=list(run.timeline or []),
        timeline_recorded=run.timeline is not None,
        call_latency_ms={call: Histogram(call_edges[call].tolist(), counts.tolist())
                         for call, counts in call_counts.items()},
        failures=dict(failures.most_common()),
        features_by_offer={name: {offer: Histogram(feature_edges[name].tolist(), counts.tolist())
                                  for offer, counts in sorted(groups.items())}
                           for name, groups in feature_counts.items()},
    )

