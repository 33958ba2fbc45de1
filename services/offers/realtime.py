"""A real-time offer for one member: the pipeline's own features and scoring, for one request."""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from services.errors import CourierError, Unprocessable, UpstreamError
from services.metrics import metrics
from services.offers.features.aggregate import features_of_request
from services.offers.features.input import classified_transactions
from services.offers.partners.client import PartnerClient
from services.offers.partners.config import PartnerConfigError, PartnerRegistry
from services.offers.partners.in_process import InProcessReferencePartner, is_served_here
from services.offers.partners.registry import load_registry


@dataclass(frozen=True)
class Scores:
    ats_prediction: float
    resp_prediction: float
    offer: str
    ats_ms: float
    resp_ms: float
    offer_ms: float


class PartnerStepError(Exception):
    """A partner call failed; ``step`` says which (ats, resp, offer), ``error`` is our upstream error."""

    def __init__(self, step: str, error: CourierError) -> None:
        super().__init__(f"{step}: {error.code}: {error.message}")
        self.step = step
        self.error = error


def score_features(client: PartnerClient | InProcessReferencePartner, resp_pool: ThreadPoolExecutor,
                   features: dict[str, Any]) -> Scores:
    """ATS and RESP in parallel (RESP on ``resp_pool``), then the offer, on the request path's client."""

    def timed(step: str, fn: Callable, *args):
        started = time.perf_counter()
        try:
            value = fn(*args)
        except CourierError as exc:
            raise PartnerStepError(step, exc) from exc
        return value, (time.perf_counter() - started) * 1000

    resp_future = resp_pool.submit(contextvars.copy_context().run, timed, "resp", client.predict_resp, features)
    try:
        ats, ats_ms = timed("ats", client.predict_ats, features)
    finally:
        resp_outcome = resp_future.exception() or resp_future.result()  # wait for RESP either way
    if isinstance(resp_outcome, BaseException):
        raise resp_outcome
    resp, resp_ms = resp_outcome
    offer, offer_ms = timed("offer", client.assign_offer, ats, resp)
    return Scores(ats, resp, offer, ats_ms, resp_ms, offer_ms)


class PartnersUnavailable(CourierError):
    status = 503
    code = "partners_unavailable"


@dataclass(frozen=True)
class RealtimeOffer:
    member_id: str
    partner: str
    features: dict[str, Any]
    ats_prediction: float
    resp_prediction: float
    offer: str
    latency_ms: dict[str, float]


class RealtimeOffers:
    """Per-process state: the registry, one pooled client per partner, and a small RESP pool.

    Everything is built on first use in the process that uses it (after gunicorn's fork).
    """

    def __init__(self, partners_file: str, deadline_s: float, service_url: str | None = None,
                 own_reference_url: str | None = None) -> None:
        self.partners_file = partners_file
        self.service_url = service_url
        # Where this service serves the reference partner (None: it does not): a partner there is
        # answered in process (see services.offers.partners.in_process).
        self.own_reference_url = own_reference_url
        self.deadline_s = deadline_s
        self._registry: PartnerRegistry | None = None
        self._clients: dict[str, PartnerClient | InProcessReferencePartner] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _state(self) -> tuple[PartnerRegistry, ThreadPoolExecutor]:
        if self._pid != os.getpid() or self._registry is None:
            with self._lock:
                if self._pid != os.getpid() or self._registry is None:
                    try:
                        self._registry = load_registry(self.partners_file, self.service_url)
                    except PartnerConfigError as exc:
                        raise PartnersUnavailable("The partner registry is unusable.",
                                                  details={"problems": exc.problems}) from exc
                    self._clients = {}
                    self._pool = ThreadPoolExecutor(8, thread_name_prefix="offers-rt")
                    self._pid = os.getpid()
        assert self._pool is not None  # made with the registry
        return self._registry, self._pool

    def client(self, partner: str) -> PartnerClient | InProcessReferencePartner:
        registry, _ = self._state()
        config = registry.get(partner)  # 404 partner_not_found
        client = self._clients.get(partner)
        if client is None and is_served_here(config, self.own_reference_url):
            client = self._clients[partner] = InProcessReferencePartner(config)
        if client is None:
            # A client is waiting: bound the whole call (retries included) by the real-time deadline.
            # Timeouts sized so that a retry still fits in the deadline (an attempt may take connect + read).
            per_call = replace(config, retries=min(config.retries, 2),
                               connect_timeout_s=min(config.connect_timeout_s, self.deadline_s / 6),
                               read_timeout_s=min(config.read_timeout_s, self.deadline_s / 3))
            try:
                client = PartnerClient(per_call, deadline_s=self.deadline_s)
            except PartnerConfigError as exc:
                raise PartnersUnavailable(f"Partner {partner!r} is misconfigured.",
                                          details={"problems": exc.problems}) from exc
            self._clients[partner] = client
        return client

    def offer(self, partner: str, member_id: str, transactions: list[dict[str, Any]], as_of: date) -> RealtimeOffer:
        """One member's offer; its outcome is counted (ok, no_transactions-like reasons, invalid, partner_error)."""
        outcomes = metrics().realtime_offers
        try:
            result = self._offer(partner, member_id, transactions, as_of)
        except Unprocessable as exc:
            outcomes.labels("invalid" if exc.code == "invalid_transactions" else "not_scorable").inc()
            raise
        except UpstreamError:
            outcomes.labels("partner_error").inc()
            raise
        outcomes.labels("ok").inc()
        return result

    def _offer(self, partner: str, member_id: str, transactions: list[dict[str, Any]], as_of: date) -> RealtimeOffer:
        started = time.perf_counter()
        client = self.client(partner)
        _, pool = self._state()
        table = features_of_request(classified_transactions(member_id, transactions), as_of)
        if member_id in table.skipped:
            reason = table.skipped[member_id]
            raise Unprocessable(f"Member {member_id!r} cannot be scored: {reason}.", code=reason,
                                details={"member_id": member_id, "as_of": as_of.isoformat()})
        if table.rejected or table.features.height != 1:
            problems = {str(r.line - 1): [r.reason] for r in table.rejected}  # line 1 is transaction 0
            raise Unprocessable("Some transactions are not usable.", code="invalid_transactions",
                                details={"transactions": problems})
        features = table.features.row(0, named=True)
        features.pop("member_id")
        try:
            scores = score_features(client, pool, features)
        except PartnerStepError as exc:
            raise exc.error from exc
        return RealtimeOffer(
            member_id=member_id, partner=partner, features=features, ats_prediction=scores.ats_prediction,
            resp_prediction=scores.resp_prediction, offer=scores.offer,
            latency_ms={"ats": round(scores.ats_ms, 3), "resp": round(scores.resp_ms, 3),
                        "offer": round(scores.offer_ms, 3),
                        "total": round((time.perf_counter() - started) * 1000, 3)},
        )

    def close(self) -> None:
        if self._pid == os.getpid():
            for client in self._clients.values():
                client.close()
            if self._pool is not None:
                self._pool.shutdown(wait=False)
        self._clients = {}
        self._registry = self._pool = None  # built again on next use
