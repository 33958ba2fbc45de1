"""A stand-in for the upstream venue API, for local runs, benchmarks and fault tests.

    .venv/bin/python -m bench.venue_standin [--port 8081] [--latency-ms 0] [--share-429 0.2]
        [--retry-after 1] [--share-5xx 0] [--share-hang 0] [--hang-s 10] [--share-malformed 0]
        [--share-trickle 0] [--trickle-ms 3]

Serves ``data/venues/<slug>.static.json`` and ``.dynamic.json`` at ``/venues/<slug>/static`` and
``/venues/<slug>/dynamic`` (unknown slug: 404), like the real API.  Faults are drawn per
request with the given shares.  ``POST /_control`` with a JSON object changes knobs at run time;
``GET /_stats`` counts what was served.  Binds to 127.0.0.1 unless ``--host`` says otherwise (the
compose stack's demo profile runs it as the ``venue-api`` service with ``--host 0.0.0.0``).

Point Courier at it with ``COURIER_VENUE_API_URL=http://127.0.0.1:8081``.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VENUES_DIR = Path(__file__).resolve().parent.parent / "data" / "venues"
_PATH = re.compile(r"^/venues/([^/]+)/(static|dynamic)$")


@dataclass
class Knobs:
    latency_ms: float = 0.0
    share_429: float = 0.0
    retry_after: int = 1
    share_5xx: float = 0.0
    share_hang: float = 0.0
    hang_s: float = 10.0
    share_malformed: float = 0.0
    share_trickle: float = 0.0  # the document, one byte every trickle_ms (each read far within any read timeout)
    trickle_ms: float = 3.0
    seed: int | None = None


class VenueStandIn:
    def __init__(self, knobs: Knobs | None = None, venues_dir: Path = VENUES_DIR) -> None:
        self.knobs = knobs or Knobs()
        self.docs = {p.name[: -len(".json")]: p.read_bytes() for p in Path(venues_dir).glob("*.json")}
        self.stats: Counter[str] = Counter()
        self.random = random.Random(self.knobs.seed)
        self._lock = threading.Lock()
        self.on_request: Callable[[str], None] | None = None  # tests: called with the path of each venue request

    def _respond(self, start_response, status: str, body: bytes, headers=()):
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
        return [body]

    def __call__(self, environ, start_response):
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if path == "/_control" and method == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            changes = json.loads(environ["wsgi.input"].read(size) or b"{}")
            names = {f.name for f in fields(Knobs)}
            for key, value in changes.items():
                if key in names:
                    setattr(self.knobs, key, value)
            return self._respond(start_response, "200 OK", json.dumps(asdict(self.knobs)).encode())
        if path == "/_stats":
            return self._respond(start_response, "200 OK", json.dumps(self.stats).encode())
        match = _PATH.match(path)
        if method != "GET" or not match:
            return self._respond(start_response, "404 Not Found", b'{"detail": "not found"}')
        k = self.knobs
        with self._lock:
            draw = self.random.random()
        self.stats["requests"] += 1
        if self.on_request is not None:
            self.on_request(path)
        if k.latency_ms:
            time.sleep(k.latency_ms / 1000)
        edge = k.share_429
        if draw < edge:
            self.stats["429"] += 1
            return self._respond(start_response, "429 Too Many Requests", b'{"detail": "slow down"}',
                                 [("Retry-After", str(k.retry_after))])
        edge += k.share_5xx
        if draw < edge:
            self.stats["5xx"] += 1
            return self._respond(start_response, "503 Service Unavailable", b'{"detail": "unavailable"}')
        edge += k.share_hang
        if draw < edge:
            self.stats["hang"] += 1
            time.sleep(k.hang_s)
        edge += k.share_malformed
        if draw < edge:
            self.stats["malformed"] += 1
            return self._respond(start_response, "200 OK", b'{"venue_raw": {"location": ')
        doc = self.docs.get(f"{match.group(1)}.{match.group(2)}")
        if doc is None:
            self.stats["404"] += 1
            return self._respond(start_response, "404 Not Found", b'{"detail": "venue not found"}')
        edge += k.share_trickle
        if draw < edge:
            self.stats["trickle"] += 1
            self._respond(start_response, "200 OK", doc)
            return self._trickled(doc, k.trickle_ms / 1000)
        self.stats["200"] += 1
        return self._respond(start_response, "200 OK", doc)

    @staticmethod
    def _trickled(doc: bytes, gap_s: float):
        for i in range(len(doc)):
            time.sleep(gap_s)
            yield doc[i:i + 1]


class KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with persistent connections, like a real API behind a load balancer.

    (Werkzeug's development server closes every connection, so each upstream call paid a new
    TCP connection and a thread: not what Courier meets in production.)
    """

    protocol_version = "HTTP/1.1"
    app: VenueStandIn

    def _serve(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        path, _, query = self.path.partition("?")
        environ = {"REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
                   "CONTENT_LENGTH": str(size), "wsgi.input": io.BytesIO(self.rfile.read(size) if size else b"")}
        captured: dict = {}

        def start_response(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers

        pieces = self.app(environ, start_response)
        code, _, reason = captured["status"].partition(" ")
        self.send_response(int(code), reason)
        for key, value in captured["headers"]:
            self.send_header(key, value)
        # Headers and the (first piece of the) body in one send: written apart with Nagle on, a
        # client without TCP_QUICKACK waits ~40 ms for its delayed ACK on every call (a peer
        # measured 89 req/s through the old stand-in and 1,286 through nginx).
        self._headers_buffer.append(b"\r\n")
        pieces = iter(pieces)
        try:
            self.wfile.write(b"".join(self._headers_buffer) + next(pieces, b""))
            self._headers_buffer = []
            for piece in pieces:  # more pieces only when the answer trickles
                self.wfile.write(piece)
        except OSError:
            self.close_connection = True  # the client gave up on a trickle

    do_GET = do_POST = _serve

    def log_message(self, *args) -> None:
        pass


def make_standin_server(app: VenueStandIn, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    handler = type("Handler", (KeepAliveHandler,), {"app": app})
    # socketserver's backlog is 5: a benchmark opening 64 connections at once saw refusals and SYN
    # retries (1 s) that no real API would cause.
    server_class = type("StandInHTTPServer", (ThreadingHTTPServer,), {"request_queue_size": 1024})
    server = server_class((host, port), handler)
    server.daemon_threads = True
    return server


class StandInServer:
    """Run the stand-in in a background thread (tests, benchmarks)."""

    def __init__(self, knobs: Knobs | None = None, port: int = 0) -> None:
        self.app = VenueStandIn(knobs)
        self.server = make_standin_server(self.app, port)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> StandInServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0 in a container).")
    parser.add_argument("--port", type=int, default=8081)
    for f in fields(Knobs):
        if f.name != "seed":
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    knobs = Knobs(**{f.name: getattr(args, f.name) for f in fields(Knobs)})
    server = make_standin_server(VenueStandIn(knobs), args.port, args.host)
    print(f"venue API stand-in on http://{args.host}:{args.port} with {asdict(knobs)}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
