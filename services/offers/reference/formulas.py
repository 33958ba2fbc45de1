"""The reference partner's models (the public contract), and validation of their inputs.

Validation is hand-written rather than a marshmallow schema: these endpoints are the load the
offers pipeline is benchmarked against, and a loop over eight keys costs a fraction of a schema.
"""

from __future__ import annotations

import math
from typing import Any

from services.errors import Unprocessable

ATS_INPUTS = ("LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT", "AVG_POINTS_BOUGHT", "PCT_BUY_TRANSACTIONS",
              "PCT_GIFT_TRANSACTIONS", "PCT_REDEEM_TRANSACTIONS")
RESP_INPUTS = ("PCT_BUY_TRANSACTIONS", "PCT_GIFT_TRANSACTIONS", "PCT_REDEEM_TRANSACTIONS", "AVG_REVENUE_USD",
               "LAST_3_TRANSACTIONS_AVG_REVENUE_USD", "DAYS_SINCE_LAST_TRANSACTION")
OFFER_THRESHOLD = 200.0
# Largest batch the reference partner's batch endpoints accept (a bigger one is 413-like 422):
# 1,000 members of 8 features are ~250 KB of JSON, well under the 1 MiB body limit.
MAX_BATCH = 1000
# Largest magnitude of any number the models take.  Real features are far smaller (points in the
# tens of thousands, shares in [0, 1]); the bound keeps every formula finite (ATS at most
# 1e15 * 3e15 = 3e30; 1.8e308 * 1.8e308 would be infinity, which JSON cannot carry) and is
# published in the endpoints' schemas, so a client's validator and these checks agree.
FEATURE_BOUND = 1e15


def validated_numbers(body: Any, names: tuple[str, ...], non_negative: tuple[str, ...] = ()) -> dict[str, float]:
    """The named numbers from a JSON object, or a 422 naming every missing or bad field."""
    if not isinstance(body, dict):
        raise Unprocessable("Body must be a JSON object.", details={"body": ["must be a JSON object"]})
    values: dict[str, float] = {}
    problems: dict[str, list[str]] = {}
    for name in names:
        value = body.get(name)
        if name not in body:
            problems[name] = ["missing"]
        elif value is None:
            problems[name] = ["must not be null"]
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            problems[name] = [f"must be a number, got {type(value).__name__}"]
        elif not math.isfinite(value) or abs(value) > FEATURE_BOUND:
            problems[name] = [f"must be between {-FEATURE_BOUND:g} and {FEATURE_BOUND:g}"]
        elif name in non_negative and value < 0:
            problems[name] = ["must not be negative"]
        else:
            values[name] = float(value)
    if problems:
        raise Unprocessable("Invalid features.", details=problems)
    return values


def ats(f: dict[str, float]) -> float:
    activity = max(0.0, f["PCT_BUY_TRANSACTIONS"] + f["PCT_GIFT_TRANSACTIONS"] - f["PCT_REDEEM_TRANSACTIONS"])
    return abs((0.7 * f["LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT"] + 0.3 * f["AVG_POINTS_BOUGHT"]) * activity)


def resp(f: dict[str, float]) -> float:
    mix = 0.4 * f["PCT_BUY_TRANSACTIONS"] + 0.3 * f["PCT_GIFT_TRANSACTIONS"] + 0.3 * f["PCT_REDEEM_TRANSACTIONS"]
    revenue = (0.3 * f["AVG_REVENUE_USD"] + 0.7 * f["LAST_3_TRANSACTIONS_AVG_REVENUE_USD"]) / 100
    return min(0.9, 1000 * mix * revenue * (1 / (f["DAYS_SINCE_LAST_TRANSACTION"] + 1)))


def assign_offer(ats_prediction: float, resp_prediction: float) -> str:
    return "OFFER_2" if ats_prediction * resp_prediction >= OFFER_THRESHOLD else "OFFER_1"


def predict_ats(body: Any) -> float:
    return ats(validated_numbers(body, ATS_INPUTS))


def predict_resp(body: Any) -> float:
    return resp(validated_numbers(body, RESP_INPUTS, non_negative=("DAYS_SINCE_LAST_TRANSACTION",)))


def offer_for(body: Any) -> str:
    values = validated_numbers(body, ("ats_prediction", "resp_prediction"))
    return assign_offer(values["ats_prediction"], values["resp_prediction"])


def _batch(body: Any, one) -> list:
    """Apply ``one`` to every item of a JSON list; a 422 names each bad item by its index."""
    if not isinstance(body, list):
        raise Unprocessable("Body must be a JSON list.", details={"body": ["must be a JSON list of objects"]})
    if not 1 <= len(body) <= MAX_BATCH:
        raise Unprocessable(f"A batch holds 1 to {MAX_BATCH} items.",
                            details={"body": [f"{len(body)} items; at most {MAX_BATCH}, at least 1"]})
    out: list = []
    problems: dict[str, Any] = {}
    for index, item in enumerate(body):
        try:
            out.append(one(item))
        except Unprocessable as exc:
            problems[str(index)] = exc.details
    if problems:
        raise Unprocessable(f"{len(problems)} of {len(body)} items are invalid.", details=problems)
    return out


def predict_ats_batch(body: Any) -> list[float]:
    """Same formula and checks as :func:`predict_ats`, for each item of a list, in order."""
    return _batch(body, predict_ats)


def predict_resp_batch(body: Any) -> list[float]:
    return _batch(body, predict_resp)


def offer_for_batch(body: Any) -> list[str]:
    return _batch(body, offer_for)
