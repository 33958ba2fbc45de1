"""The estimate use case: venue + hour + retail flag -> predicted delivery minutes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.errors import CourierError, NotFound
from services.estimate.model import TreeModel
from services.estimate.prep_times import PrepTimeSnapshot

UNKNOWN_VENUE_POLICIES = ("default", "reject")


class ModelUnavailable(CourierError):
    status = 503
    code = "model_unavailable"


@dataclass(frozen=True)
class EstimateQuery:
    venue_id: str
    hour_of_day: int
    is_retail: bool


@dataclass(frozen=True)
class Estimate:
    minutes: float
    venue_known: bool
    model_version: str


def estimate_delivery(
    model: TreeModel | None, prep_times: PrepTimeSnapshot, query: EstimateQuery, unknown_venue: str = "default"
) -> Estimate:
    """Predict delivery minutes.

    An unknown venue uses the median preparation time over known venues (a venue we have not
    seen is most likely a typical one), unless the policy is ``reject``.
    """
    if model is None:
        raise ModelUnavailable("No delivery-time model is loaded; see /readyz.", headers={"Retry-After": "30"})
    prep = prep_times.times.get(query.venue_id)
    known = prep is not None
    if not known:
        if unknown_venue == "reject":
            raise NotFound(f"Unknown venue {query.venue_id!r}.", code="venue_not_found",
                           details={"venue_id": query.venue_id})
        prep = prep_times.default
        if prep is None:
            raise ModelUnavailable("No venue preparation times are loaded; run `flask seed-venues`.",
                                   headers={"Retry-After": "30"})
    minutes = model.predict(1 if query.is_retail else 0, prep, query.hour_of_day)
    if not math.isfinite(minutes):
        # JSON has no NaN or Infinity: a model that yields them is broken, not the request.
        raise ModelUnavailable(f"The delivery-time model {model.version} gave no finite estimate for this input.",
                               code="model_error", status=500)
    return Estimate(minutes=minutes, venue_known=known, model_version=model.version)
