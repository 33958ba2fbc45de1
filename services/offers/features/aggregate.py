"""Per-member aggregates of classified transactions, merged across partitions, and the registry evaluated
on them (``compute_features_frame``: a whole frame at once, as a real-time request needs)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import polars as pl

from services.offers.features.definitions import REGISTRY, Aggregates
from services.offers.features.input import RejectedRow, classify_rows


@dataclass
class FeatureTable:
    """Result of the feature step: one row per member with transactions, plus the rest."""

    features: pl.DataFrame  # member_id, then every registry feature
    skipped: dict[str, str]  # member_id -> reason (no_transactions, ...)
    rejected: list[RejectedRow]
    rows_read: int
    rejected_counts: dict[str, int] | None = None  # complete counts when ``rejected`` is a sample

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        if self.rejected_counts is not None:
            return dict(self.rejected_counts)
        counts: dict[str, int] = {}
        for row in self.rejected:
            counts[row.reason] = counts.get(row.reason, 0) + 1
        return counts


_RECENT_ORDER = ["member_id", "ts", "line"]  # equal timestamps: the later row in the file is more recent


def partial_aggregates(transactions: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-member sums and counts of one chunk, and each member's 3 most recent transactions in it."""
    sums = transactions.group_by("member_id").agg(
        n=pl.len(),
        sum_points=pl.col("points").sum(),
        sum_revenue=pl.col("revenue").sum(),
        n_buy=(pl.col("type_norm") == "buy").sum(),
        n_gift=(pl.col("type_norm") == "gift").sum(),
        n_redeem=(pl.col("type_norm") == "redeem").sum(),
        last_ts=pl.col("ts").max(),
    )
    recent = (transactions.select("member_id", "ts", "line", "points", "revenue").sort(_RECENT_ORDER)
              .group_by("member_id", maintain_order=True).tail(3))
    return sums, recent


def _merge_aggregates(a: tuple[pl.DataFrame, pl.DataFrame] | None,
                      b: tuple[pl.DataFrame, pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Combine two partial states; the result is again at most 3 recent rows per member."""
    if a is None:
        return b
    sums = pl.concat([a[0], b[0]]).group_by("member_id").agg(
        *[pl.col(c).sum() for c in ("n", "sum_points", "sum_revenue", "n_buy", "n_gift", "n_redeem")],
        pl.col("last_ts").max(),
    )
    recent = pl.concat([a[1], b[1]]).sort(_RECENT_ORDER).group_by("member_id", maintain_order=True).tail(3)
    return sums, recent


def evaluate_registry(state: tuple[pl.DataFrame, pl.DataFrame], as_of: date) -> pl.DataFrame:
    """Every registry feature for every member of a merged aggregate state."""
    sums, recent = state
    last3 = recent.group_by("member_id").agg(last3_points=pl.col("points").sum(),
                                               last3_revenue=pl.col("revenue").sum(), last3_n=pl.len())
    a = Aggregates()
    return (
        sums.join(last3, on="member_id", how="left")
        .with_columns(last_date=pl.col("last_ts").dt.date(), as_of=pl.lit(as_of, dtype=pl.Date))
        .select(
            "member_id",
            *[fn(a).cast(pl.Int64 if name == "DAYS_SINCE_LAST_TRANSACTION" else pl.Float64).alias(name)
              for name, fn in REGISTRY.items()],
        )
    )


CHUNK_ROWS = 500_000


def skipped_of(features: pl.DataFrame, others: dict[str, bool]) -> tuple[pl.DataFrame, dict[str, str]]:
    """Members without a scoreable transaction, with the reason; and the features of the rest."""
    scored = set(features["member_id"].to_list())
    skipped = {m: ("no_transactions" if id_only else "no_valid_transactions")
               for m, id_only in others.items() if m not in scored}
    for member_id in features.filter(pl.col("DAYS_SINCE_LAST_TRANSACTION") < 0)["member_id"]:
        skipped[member_id] = "last_transaction_after_as_of"
    return features.filter(pl.col("DAYS_SINCE_LAST_TRANSACTION") >= 0), skipped


def empty_features() -> pl.DataFrame:
    return pl.DataFrame(schema={"member_id": pl.String, **{
        name: pl.Int64 if name == "DAYS_SINCE_LAST_TRANSACTION" else pl.Float64 for name in REGISTRY}})


def compute_features_frame(raw: pl.LazyFrame | pl.DataFrame, as_of: date,
                           chunk_rows: int = CHUNK_ROWS) -> FeatureTable:
    """Features of ``raw`` (the CANONICAL string columns plus ``line``), chunk by chunk.

    Each chunk is classified and reduced to per-member partial aggregates, then merged into the
    running state, which holds a few numbers and at most 3 recent transactions per member.  Used
    for in-memory input (a real-time request is one chunk); files go through :func:`scan_features`,
    which bounds memory by partitioning members instead.
    """
    # An in-memory frame is one chunk: no streaming engine to start.
    chunks = [raw] if isinstance(raw, pl.DataFrame) else raw.collect_batches(chunk_size=chunk_rows)
    return features_of_classified((classify_rows(chunk.lazy()).collect() for chunk in chunks), as_of)


def features_of_classified(classified_chunks: Iterable[pl.DataFrame], as_of: date) -> FeatureTable:
    """The feature step after classification: chunks classified by :func:`classify_rows`, or one
    member's request classified by ``input.classified_transactions``."""
    state = None
    rejected: list[RejectedRow] = []
    others: dict[str, bool] = {}  # member ids seen on non-transaction rows -> has an id-only row
    rows = 0
    for classified in classified_chunks:
        rows += classified.height
        transactions = classified.filter(pl.col("kind") == "transaction")
        if transactions.height:
            state = _merge_aggregates(state, partial_aggregates(transactions))
        bad = classified.filter(pl.col("kind") != "transaction")
        for line, member_id, kind, reason in bad.select("line", "member_id", "kind", "reason").iter_rows():
            if member_id is not None:
                others[member_id] = others.get(member_id, False) or kind == "id_only"
            if kind == "rejected":
                rejected.append(RejectedRow(line, member_id, reason))
    features = empty_features() if state is None else evaluate_registry(state, as_of).sort("member_id")
    features, skipped = skipped_of(features, others)
    return FeatureTable(features=features, skipped=skipped, rejected=sorted(rejected, key=lambda r: r.line),
                        rows_read=rows)
