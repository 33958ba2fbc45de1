"""The reference partner as a standalone keep-alive server: one process, one event loop (aiohttp).

    python -m services.offers.reference_server [--host 127.0.0.1] [--port 8001] [--prefix /partners/reference]

Why a second server for the same endpoints: the service's own gunicorn sync workers close every
connection, so a partner served there makes each call pay a TCP handshake, unlike the task's own
partner (FastAPI under one uvicorn worker, persistent HTTP/1.1 connections).  This server matches
that shape with a server already among our dependencies (aiohttp, the batch scorer's client);
gunicorn's ``gthread`` worker with keep-alive was measured first and served only ~1,300 req/s
here.  The formulas, validation and 422 envelopes are exactly the blueprint's
(``services.offers.reference_models``).  Also used by tests as a live loopback partner.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from services.errors import CourierError
from services.offers import reference_models

# path -> function(body) -> JSON-ready answer
ROUTES: dict[str, Callable[[Any], Any]] = {
    "/ml/ats/predict": lambda body: {"prediction": reference_models.predict_ats(body)},
    "/ml/resp/predict": lambda body: {"prediction": reference_models.predict_resp(body)},
    "/offer/assign": lambda body: {"offer": reference_models.offer_for(body)},
    "/ml/ats/predict/batch": lambda body: [{"prediction": p} for p in reference_models.predict_ats_batch(body)],
    "/ml/resp/predict/batch": lambda body: [{"prediction": p} for p in reference_models.predict_resp_batch(body)],
    "/offer/assign/batch": lambda body: [{"offer": o} for o in reference_models.offer_for_batch(body)],
}


def _error(status: int, message: str, code: str, details: dict) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        body=json.dumps({"error": message, "code": code, "details": details}).encode())


def make_app(prefix: str = "/partners/reference",
             intercept: Callable[[str, Any], web.Response | None] | None = None) -> web.Application:
    """The reference partner's routes under ``prefix``.

    ``intercept(path, body)`` (tests) may answer a call itself, e.g. with a failure, before the formula.
    """
    prefix = prefix.rstrip("/")

    def handler(path: str, fn: Callable[[Any], Any]):
        async def handle(request: web.Request) -> web.Response:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(422, "Body must be a JSON object.", "unprocessable", {"body": ["not valid JSON"]})
            if intercept is not None:
                answer = intercept(path, body)
                if answer is not None:
                    return answer
            try:
                result = fn(body)
            except CourierError as exc:
                return _error(exc.status, exc.message, exc.code, exc.details or {})
            return web.Response(body=json.dumps(result).encode(), content_type="application/json")

        return handle

    async def ping(request: web.Request) -> web.Response:
        if intercept is not None:
            answer = intercept("/", None)
            if answer is not None:
                return answer
        return web.json_response({"msg": "pong"})

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_get(prefix + "/", ping)
    for path, fn in ROUTES.items():
        app.router.add_post(prefix + path, handler(path, fn))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the reference partner with keep-alive connections.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=8001, help="Port to listen on.")
    parser.add_argument("--prefix", default="/partners/reference", help="URL prefix of the endpoints.")
    args = parser.parse_args()
    print(f"reference partner on http://{args.host}:{args.port}{args.prefix} (keep-alive, one process)", flush=True)
    web.run_app(make_app(args.prefix), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
