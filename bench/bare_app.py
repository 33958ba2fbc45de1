"""The framework's part of Courier's hot paths and nothing else: the ceiling the benches compare against.

    gunicorn -c gunicorn.conf.py bench.bare_app:app

``POST /echo`` parses a JSON body and answers a small JSON object (the estimate's framework work);
``GET /query`` reads four query parameters and answers a small JSON object (pricing's).  Same
Flask, same gunicorn settings, no validation, no access log, no hooks.
"""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/echo")
def echo():
    body = request.get_json()
    return jsonify(result=12.5, error=None, venue_known=True, model_version=str(len(body)))


@app.get("/query")
def query():
    args = request.args
    return jsonify(total_price=1190, small_order_surcharge=0, cart_value=len(args),
                   delivery={"fee": 190, "distance": 177})
