"""The reference partner as a standalone keep-alive server: one uvicorn process, one event loop.

    python -m services.offers.reference.server [--host 127.0.0.1] [--port 8001] [--prefix /partners/reference]

Why a second server for the same endpoints: the service's own gunicorn sync workers close every
connection, so a partner served there makes each call pay a TCP handshake, unlike the task's own
partner (FastAPI under one uvicorn worker, persistent HTTP/1.1 connections).  This is that shape:
uvicorn, one worker, with a plain ASGI app (no framework: the formulas, validation and 422
envelopes are exactly the blueprint's, from ``services.offers.reference.formulas``).  gunicorn's
``gthread`` worker with keep-alive was measured first: ~1,300 req/s here.  Tests use it as a live
loopback partner, with a hook to make chosen calls fail.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from services.errors import CourierError
from services.offers.reference import formulas as reference_formulas

# path -> function(body) -> JSON-ready answer
ROUTES: dict[str, Callable[[Any], Any]] = {
    "/ml/ats/predict": lambda body: {"prediction": reference_formulas.predict_ats(body)},
    "/ml/resp/predict": lambda body: {"prediction": reference_formulas.predict_resp(body)},
    "/offer/assign": lambda body: {"offer": reference_formulas.offer_for(body)},
    "/ml/ats/predict/batch": lambda body: [{"prediction": p} for p in reference_formulas.predict_ats_batch(body)],
    "/ml/resp/predict/batch": lambda body: [{"prediction": p} for p in reference_formulas.predict_resp_batch(body)],
    "/offer/assign/batch": lambda body: [{"offer": o} for o in reference_formulas.offer_for_batch(body)],
}
MAX_BODY = 1024 * 1024  # as the service's own MAX_CONTENT_LENGTH

# What a test hook may answer instead of the formula: None (go on), a status, or (status, body text).
Intercept = Callable[[str, Any], "int | tuple[int, str] | None"]


def _error(status: int, message: str, code: str, details: dict) -> tuple[int, bytes]:
    return status, json.dumps({"error": message, "code": code, "details": details}).encode()


def answer(prefix: str, method: str, path: str, raw: bytes,
           intercept: Intercept | None = None) -> tuple[int, bytes]:
    """(status, JSON body) for one request: the routing and error rules, without any server."""
    if not path.startswith(prefix):
        return _error(404, "Not found.", "not_found", {})
    route = path[len(prefix):] or "/"
    if method == "GET" and route == "/":
        body = None
    elif method == "POST" and route in ROUTES:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return _error(422, "Body must be a JSON object.", "unprocessable", {"body": ["not valid JSON"]})
    elif route == "/" or route in ROUTES:
        return _error(405, "Method not allowed.", "method_not_allowed", {})
    else:
        return _error(404, "Not found.", "not_found", {})
    if intercept is not None:
        injected = intercept(route, body)
        if isinstance(injected, tuple):
            return injected[0], injected[1].encode()
        if injected:
            return injected, b'{"detail": "injected"}'
    if body is None:
        return 200, b'{"msg": "pong"}'
    try:
        return 200, json.dumps(ROUTES[route](body)).encode()
    except CourierError as exc:
        return _error(exc.status, exc.message, exc.code, exc.details or {})


def make_app(prefix: str = "/partners/reference", intercept: Intercept | None = None,
             on_connection: Callable[[Any], None] | None = None):
    """The reference partner as a plain ASGI app; ``on_connection(client)`` sees each request's peer."""
    prefix = prefix.rstrip("/")

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if on_connection is not None:
            on_connection(scope.get("client"))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                status, body = _error(413, "Request body too large.", "payload_too_large", {})
                break
            chunks.append(chunk)
            more = message.get("more_body", False)
        else:
            status, body = answer(prefix, scope["method"], scope["path"], b"".join(chunks), intercept)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the reference partner with keep-alive connections.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=8001, help="Port to listen on.")
    parser.add_argument("--prefix", default="/partners/reference", help="URL prefix of the endpoints.")
    args = parser.parse_args()
    print(f"reference partner on http://{args.host}:{args.port}{args.prefix} (uvicorn, one worker, keep-alive)",
          flush=True)
    # One worker on purpose: uvicorn with --workers > 1 loses TCP_NODELAY (a known upstream bug).
    uvicorn.run(make_app(args.prefix), host=args.host, port=args.port, workers=1, http="httptools",
                log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
