"""Per-member aggregates of classified rows and the registry evaluated on them (``member_features``),
for one partition of a file (``scan.py``) and for one member's request (``features_of_request``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import polars as pl

from services.offers.features.definitions import REGISTRY, Aggregates
from services.offers.features.input import RejectedRow


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
    """Per-member sums and counts, and each member's 3 most recent transactions."""
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


def evaluate_registry(state: tuple[pl.DataFrame, pl.DataFrame], as_of: date) -> pl.DataFrame:
    """Every registry feature for every member of an aggregate state."""
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


def member_features(rows: pl.DataFrame, as_of: date) -> tuple[pl.DataFrame, dict[str, str]]:
    """The features of every member of classified rows (:func:`input.classify_rows`, or
    ``input.classified_transactions`` for a request), and the members skipped, with the reason."""
    transactions = rows.filter(pl.col("kind") == "transaction")
    features = (evaluate_registry(partial_aggregates(transactions), as_of).sort("member_id")
                if transactions.height else empty_features())
    others = dict(rows.filter((pl.col("kind") != "transaction") & pl.col("member_id").is_not_null())
                  .group_by("member_id").agg((pl.col("kind") == "id_only").any()).iter_rows())
    return skipped_of(features, others)


def features_of_request(rows: pl.DataFrame, as_of: date) -> FeatureTable:
    """One request's classified transactions: its member's features or skip reason, and every
    rejected transaction in line order."""
    features, skipped = member_features(rows, as_of)
    rejected = [RejectedRow(line, member_id, reason) for line, member_id, reason in
                rows.filter(pl.col("kind") == "rejected").select("line", "member_id", "reason").iter_rows()]
    return FeatureTable(features=features, skipped=skipped, rejected=rejected, rows_read=rows.height)
