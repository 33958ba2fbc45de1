"""The feature registry: each feature is a named function of a member's aggregates (``@feature``);
adding one is one decorated function, and partners choose which they receive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # polars is imported when aggregates are built, not with the registry's names:
    import polars as pl  # the partner registry checks feature names at start-up (~0.1 s saved)


def _column(name: str) -> Callable[[], pl.Expr]:
    def make() -> pl.Expr:
        import polars as pl

        return pl.col(name)

    return make


@dataclass(frozen=True)
class Aggregates:
    """Column expressions of one member's aggregates, the inputs of every feature function."""

    n: pl.Expr = field(default_factory=_column("n"))
    sum_points: pl.Expr = field(default_factory=_column("sum_points"))
    sum_revenue: pl.Expr = field(default_factory=_column("sum_revenue"))
    n_buy: pl.Expr = field(default_factory=_column("n_buy"))
    n_gift: pl.Expr = field(default_factory=_column("n_gift"))
    n_redeem: pl.Expr = field(default_factory=_column("n_redeem"))
    last3_points: pl.Expr = field(default_factory=_column("last3_points"))
    last3_revenue: pl.Expr = field(default_factory=_column("last3_revenue"))
    last3_n: pl.Expr = field(default_factory=_column("last3_n"))
    last_date: pl.Expr = field(default_factory=_column("last_date"))
    as_of: pl.Expr = field(default_factory=_column("as_of"))


FeatureFn = Callable[[Aggregates], "pl.Expr"]


REGISTRY: dict[str, FeatureFn] = {}


def feature(name: str) -> Callable[[FeatureFn], FeatureFn]:
    def register(fn: FeatureFn) -> FeatureFn:
        if name in REGISTRY:
            raise ValueError(f"feature {name} is registered twice")
        REGISTRY[name] = fn
        return fn

    return register


@feature("AVG_POINTS_BOUGHT")
def avg_points_bought(a: Aggregates) -> pl.Expr:
    return a.sum_points / a.n  # redemptions are negative and count


@feature("AVG_REVENUE_USD")
def avg_revenue_usd(a: Aggregates) -> pl.Expr:
    return a.sum_revenue / a.n


@feature("LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT")
def last_3_avg_points(a: Aggregates) -> pl.Expr:
    return a.last3_points / a.last3_n


@feature("LAST_3_TRANSACTIONS_AVG_REVENUE_USD")
def last_3_avg_revenue(a: Aggregates) -> pl.Expr:
    return a.last3_revenue / a.last3_n


@feature("PCT_BUY_TRANSACTIONS")
def pct_buy(a: Aggregates) -> pl.Expr:
    return a.n_buy / a.n


@feature("PCT_GIFT_TRANSACTIONS")
def pct_gift(a: Aggregates) -> pl.Expr:
    return a.n_gift / a.n


@feature("PCT_REDEEM_TRANSACTIONS")
def pct_redeem(a: Aggregates) -> pl.Expr:
    return a.n_redeem / a.n


@feature("DAYS_SINCE_LAST_TRANSACTION")
def days_since_last(a: Aggregates) -> pl.Expr:
    return (a.as_of - a.last_date).dt.total_days()


STANDARD_FEATURES: tuple[str, ...] = tuple(REGISTRY)  # the 8 of the public contract, in order
