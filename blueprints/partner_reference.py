"""The reference partner's ML endpoints, served by Courier for development, tests and benchmarks."""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify, request

from services.errors import Unprocessable
from services.offers import reference_formulas

bp = Blueprint("partner_reference", __name__)


def init_app(app: Flask) -> None:
    """The reference partner's endpoints, when enabled (stateless: nothing to keep on the app)."""
    if app.config["REFERENCE_PARTNER_ENABLED"]:
        app.register_blueprint(bp, url_prefix=app.config["REFERENCE_PARTNER_PREFIX"].rstrip("/"))


def _body():
    body = request.get_json(silent=True)
    if body is None:
        raise Unprocessable("Body must be a JSON object.", details={"body": ["not valid JSON"]})
    return body


@bp.get("/")
def ping():
    return jsonify(msg="pong")


@bp.post("/ml/ats/predict")
def ats_predict():
    return jsonify(prediction=reference_formulas.predict_ats(_body()))


@bp.post("/ml/resp/predict")
def resp_predict():
    return jsonify(prediction=reference_formulas.predict_resp(_body()))


@bp.post("/offer/assign")
def offer_assign():
    return jsonify(offer=reference_formulas.offer_for(_body()))


# Batch twins: a JSON list in, a list out in the same order (at most reference_formulas.MAX_BATCH).
@bp.post("/ml/ats/predict/batch")
def ats_predict_batch():
    return jsonify([{"prediction": p} for p in reference_formulas.predict_ats_batch(_body())])


@bp.post("/ml/resp/predict/batch")
def resp_predict_batch():
    return jsonify([{"prediction": p} for p in reference_formulas.predict_resp_batch(_body())])


@bp.post("/offer/assign/batch")
def offer_assign_batch():
    return jsonify([{"offer": o} for o in reference_formulas.offer_for_batch(_body())])


def document(spec, app) -> None:
    from blueprints.openapi import error_responses

    if not app.config["REFERENCE_PARTNER_ENABLED"]:
        return
    prefix = app.config["REFERENCE_PARTNER_PREFIX"].rstrip("/")
    def features(names):
        # Only the inputs of that model are read (and required); other keys are ignored.
        return {"type": "object", "additionalProperties": True, "required": list(names),
                "properties": {name: {"type": "number", "minimum": 0} if name == "DAYS_SINCE_LAST_TRANSACTION"
                               else {"type": "number"} for name in names}}

    prediction = {"description": "Prediction", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"prediction": {"type": "number"}}}}}}
    for path, summary, names in (("/ml/ats/predict", "ATS model", reference_formulas.ATS_INPUTS),
                                 ("/ml/resp/predict", "RESP model", reference_formulas.RESP_INPUTS)):
        spec.path(path=prefix + path, operations={"post": {
            "summary": f"Reference partner: {summary}", "tags": ["reference partner"],
            "requestBody": {"required": True, "content": {"application/json": {"schema": features(names)}}},
            "responses": {"200": prediction, **error_responses(422)}}})
    spec.path(path=prefix + "/offer/assign", operations={"post": {
        "summary": "Reference partner: offer for predictions", "tags": ["reference partner"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["ats_prediction", "resp_prediction"],
            "properties": {"ats_prediction": {"type": "number"}, "resp_prediction": {"type": "number"}}}}}},
        "responses": {"200": {"description": "Offer", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"offer": {"type": "string", "enum": ["OFFER_1", "OFFER_2"]}}}}}},
            **error_responses(422)}}})
    def batch_of(schema, description):
        return {"type": "array", "minItems": 1, "maxItems": reference_formulas.MAX_BATCH, "items": schema,
                "description": description}

    batch_note = (f"Batch of at most {reference_formulas.MAX_BATCH} items; answers in the same order. "
                  "A bad item fails the whole batch with a 422 whose details are keyed by the item's index.")
    for path, summary, names in (("/ml/ats/predict/batch", "ATS model, batch", reference_formulas.ATS_INPUTS),
                                 ("/ml/resp/predict/batch", "RESP model, batch", reference_formulas.RESP_INPUTS)):
        spec.path(path=prefix + path, operations={"post": {
            "summary": f"Reference partner: {summary}", "description": batch_note, "tags": ["reference partner"],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": batch_of(features(names), "feature objects")}}},
            "responses": {"200": {"description": "Predictions", "content": {"application/json": {"schema": {
                "type": "array", "items": {"type": "object", "properties": {"prediction": {"type": "number"}}}}}}},
                **error_responses(422)}}})
    spec.path(path=prefix + "/offer/assign/batch", operations={"post": {
        "summary": "Reference partner: offers for predictions, batch", "description": batch_note,
        "tags": ["reference partner"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": batch_of({
            "type": "object", "required": ["ats_prediction", "resp_prediction"],
            "properties": {"ats_prediction": {"type": "number"}, "resp_prediction": {"type": "number"}}},
            "prediction pairs")}}},
        "responses": {"200": {"description": "Offers", "content": {"application/json": {"schema": {
            "type": "array", "items": {"type": "object", "properties": {
                "offer": {"type": "string", "enum": ["OFFER_1", "OFFER_2"]}}}}}}},
            **error_responses(422)}}})
    spec.path(path=prefix + "/", operations={"get": {"summary": "Reference partner: ping",
                                                     "tags": ["reference partner"],
                                                     "responses": {"200": {"description": "pong"}}}})
