"""Per-request plumbing: request id, access log line, database session lifecycle."""

from __future__ import annotations

import re
import time

from flask import Flask, g, request
from sqlalchemy.orm import Session

from capabilities.runtime import runtime
from services.logs import AccessLog, new_request_id, request_id_var, silence_dev_server_request_lines

# An incoming id is echoed into logs and headers: accept only a bounded, printable token.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def db_session() -> Session:
    """The request's database session, opened on first use and closed on teardown."""
    session = g.get("_db_session")
    if session is None:
        session = runtime().session()
        g._db_session = session
    return session


class ClientAddress:
    """The address to log for a request: the connection's peer, or, when the peer is a trusted
    proxy (``TRUSTED_PROXIES``), the nearest address in ``X-Forwarded-For`` that is not one: the
    header's other entries are whatever the client wrote, so only what trusted hops appended counts.
    Trust is decided once per peer address (a proxy is one or a few addresses)."""

    def __init__(self, trusted: tuple | None) -> None:
        self.trusted = trusted or ()
        self._peers: dict[str, bool] = {}

    def _is_trusted(self, address: str) -> bool:
        known = self._peers.get(address)
        if known is None:
            import ipaddress

            try:
                ip = ipaddress.ip_address(address)
                known = any(ip in network for network in self.trusted)
            except ValueError:
                known = False
            if len(self._peers) < 1024:  # bounded: only the peers seen (proxies, clients without one)
                self._peers[address] = known
        return known

    def __call__(self, environ: dict) -> str | None:
        peer = environ.get("REMOTE_ADDR")
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if not peer or not forwarded or not self.trusted or not self._is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop[:64]
        return hops[0][:64] if hops else peer


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class _RequestMetrics:
    """Counts and times each request by route template, method and status.

    The labelled children are kept per label tuple: looking them up in prometheus_client on every
    request (a lock and a dict per family) was most of its cost.  Label values are bounded: route
    templates, not paths; any other method is counted as "OTHER".
    """

    def __init__(self) -> None:
        from services.metrics import metrics

        self._families = metrics()
        self._children: dict[tuple, tuple] = {}
        self.in_flight = self._families.requests_in_flight

    def __call__(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            label_method = method if method in _METHODS else "OTHER"
            children = (self._families.requests.labels(route, label_method, str(status)),
                        self._families.request_seconds.labels(route, label_method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def register_request_hooks(app: Flask) -> None:
    access_log = AccessLog() if app.config["ACCESS_LOG"] else None
    if access_log is not None:
        silence_dev_server_request_lines()
    client_address = ClientAddress(app.config["TRUSTED_PROXIES"])
    valid_id = _VALID_REQUEST_ID.match
    observe = _RequestMetrics() if app.config["METRICS_ENABLED"] else None
    in_flight = observe.in_flight if observe is not None else None

    # The request id and start time live in the WSGI environ: one proxy lookup per hook instead of
    # one per attribute of ``g`` (each ~1 us).
    @app.before_request
    def _start() -> None:
        environ = request.environ
        incoming = environ.get("HTTP_X_REQUEST_ID")
        rid = incoming if incoming and valid_id(incoming) else new_request_id()
        environ["courier.request_id"] = rid
        environ["courier.started"] = time.perf_counter()
        environ["courier.rid_token"] = request_id_var.set(rid)
        if in_flight is not None:
            in_flight.inc()
            environ["courier.in_flight"] = True

    @app.after_request
    def _finish(response):
        environ = request.environ
        rid = environ.get("courier.request_id")
        if rid is not None:
            response.headers["X-Request-ID"] = rid
            elapsed = time.perf_counter() - environ["courier.started"]
            if observe is not None:
                rule = request.url_rule
                observe(rule.rule if rule is not None else "(unmatched)", environ["REQUEST_METHOD"],
                        response.status_code, elapsed)
            if access_log is not None:
                access_log.write(environ["REQUEST_METHOD"], request.path, response.status_code,
                                 round(elapsed * 1000, 3), rid, None if response.is_streamed else
                                 response.calculate_content_length(), client_address(environ),
                                 environ.get("HTTP_USER_AGENT"))
        return response

    @app.teardown_request
    def _forget_request_id(_exc) -> None:
        if request.environ.pop("courier.in_flight", False):  # counted in _start, whatever happened since
            in_flight.dec()  # type: ignore[union-attr]
        # Lines logged after this request (by this worker, between requests) must not carry its id.
        token = request.environ.pop("courier.rid_token", None)
        if token is not None:
            try:
                request_id_var.reset(token)
            except ValueError:  # set in another context (a copied one): nothing of ours to undo
                pass

    @app.teardown_appcontext
    def _close_session(_exc) -> None:
        session = g.pop("_db_session", None)
        if session is not None:
            session.close()
