"""The reference partner's ML endpoints, served by Courier for development, tests and benchmarks."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from blueprints.declare import JsonSchema, operation
from services.errors import Unprocessable
from services.offers.reference import formulas as reference_formulas

bp = Blueprint("partner_reference", __name__)


def _features(names: tuple[str, ...] | list[str]) -> JsonSchema:
    # Only the inputs of that model are read (and required); other keys are ignored.
    return {"type": "object", "additionalProperties": True, "required": list(names),
            "properties": {name: _number(0 if name == "DAYS_SINCE_LAST_TRANSACTION" else None) for name in names}}


def _number(minimum: float | None = None) -> JsonSchema:
    bound = reference_formulas.FEATURE_BOUND
    return {"type": "number", "minimum": -bound if minimum is None else minimum, "maximum": bound}


def _batch_of(item: JsonSchema, description: str) -> JsonSchema:
    return {"type": "array", "minItems": 1, "maxItems": reference_formulas.MAX_BATCH, "items": item,
            "description": description}


# The reference formulas check their own input (per-item 422 messages) and the endpoints answer
# with plain JSON: their contract is written as JSON schemas here, next to the views.
_PREDICTIONS = {"type": "object", "required": ["ats_prediction", "resp_prediction"],
                "properties": {"ats_prediction": _number(), "resp_prediction": _number()}}
_PREDICTION = {"type": "object", "properties": {"prediction": {"type": "number"}}}
_OFFER = {"type": "object", "properties": {"offer": {"type": "string", "enum": ["OFFER_1", "OFFER_2"]}}}
_BATCH_NOTE = (f"Batch of at most {reference_formulas.MAX_BATCH} items; answers in the same order. "
               "A bad item fails the whole batch with a 422 whose details are keyed by the item's index.")
_TAG = "reference partner"
# One member of the bundled sample (01453339 as of 2024-01-05): "Try it out" starts with real features.
_SAMPLE = {"AVG_POINTS_BOUGHT": 2244.44, "AVG_REVENUE_USD": 3.436, "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT": 133.33,
           "LAST_3_TRANSACTIONS_AVG_REVENUE_USD": 1.806, "PCT_BUY_TRANSACTIONS": 0.3333,
           "PCT_GIFT_TRANSACTIONS": 0.3889, "PCT_REDEEM_TRANSACTIONS": 0.2778, "DAYS_SINCE_LAST_TRANSACTION": 325}
_ATS_EXAMPLE = {name: _SAMPLE[name] for name in reference_formulas.ATS_INPUTS}
_RESP_EXAMPLE = {name: _SAMPLE[name] for name in reference_formulas.RESP_INPUTS}
# What the two models answer to it (about 340.7 and 0.0235: OFFER_1).
_PREDICTIONS_EXAMPLE = {"ats_prediction": reference_formulas.predict_ats(_ATS_EXAMPLE),
                        "resp_prediction": reference_formulas.predict_resp(_RESP_EXAMPLE)}


def _body():
    body = request.get_json(silent=True)
    if body is None:
        raise Unprocessable("Body must be a JSON object.", details={"body": ["not valid JSON"]})
    return body


@bp.get("/")
@operation(summary="Reference partner: ping", tag=_TAG, response={"type": "object"}, response_description="pong")
def ping():
    return jsonify(msg="pong")


@bp.post("/ml/ats/predict")
@operation(summary="Reference partner: ATS model", tag=_TAG, body=_features(reference_formulas.ATS_INPUTS),
           body_example=_ATS_EXAMPLE, response=_PREDICTION, response_description="Prediction", errors=(422,))
def ats_predict():
    return jsonify(prediction=reference_formulas.predict_ats(_body()))


@bp.post("/ml/resp/predict")
@operation(summary="Reference partner: RESP model", tag=_TAG, body=_features(reference_formulas.RESP_INPUTS),
           body_example=_RESP_EXAMPLE, response=_PREDICTION, response_description="Prediction", errors=(422,))
def resp_predict():
    return jsonify(prediction=reference_formulas.predict_resp(_body()))


@bp.post("/offer/assign")
@operation(summary="Reference partner: offer for predictions", tag=_TAG, body=_PREDICTIONS, response=_OFFER,
           body_example=_PREDICTIONS_EXAMPLE,
           response_description="Offer", errors=(422,))
def offer_assign():
    return jsonify(offer=reference_formulas.offer_for(_body()))


# Batch twins: a JSON list in, a list out in the same order (at most reference_formulas.MAX_BATCH).
@bp.post("/ml/ats/predict/batch")
@operation(summary="Reference partner: ATS model, batch", tag=_TAG, description=_BATCH_NOTE,
           body=_batch_of(_features(reference_formulas.ATS_INPUTS), "feature objects"), body_example=[_ATS_EXAMPLE],
           response={"type": "array", "items": _PREDICTION}, response_description="Predictions", errors=(422,))
def ats_predict_batch():
    return jsonify([{"prediction": p} for p in reference_formulas.predict_ats_batch(_body())])


@bp.post("/ml/resp/predict/batch")
@operation(summary="Reference partner: RESP model, batch", tag=_TAG, description=_BATCH_NOTE,
           body=_batch_of(_features(reference_formulas.RESP_INPUTS), "feature objects"), body_example=[_RESP_EXAMPLE],
           response={"type": "array", "items": _PREDICTION}, response_description="Predictions", errors=(422,))
def resp_predict_batch():
    return jsonify([{"prediction": p} for p in reference_formulas.predict_resp_batch(_body())])


@bp.post("/offer/assign/batch")
@operation(summary="Reference partner: offers for predictions, batch", tag=_TAG, description=_BATCH_NOTE,
           body=_batch_of(_PREDICTIONS, "prediction pairs"), body_example=[_PREDICTIONS_EXAMPLE],
           response={"type": "array", "items": _OFFER},
           response_description="Offers", errors=(422,))
def offer_assign_batch():
    return jsonify([{"offer": o} for o in reference_formulas.offer_for_batch(_body())])
