"""Loyalty offers' state: real-time partner clients, distributed runs' Celery wiring, report pages."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from capabilities.runtime import runtime
from services.offers.realtime import RealtimeOffers
from services.offers.reports.pages import ReportPages
from services.offers.runs.distributed.celery_app import DistributedOffers

EXTENSION = "courier.offers"


@dataclass(frozen=True)
class OffersCapability:
    """Real-time offers (one member over REST) and distributed runs (Celery, built on first use)."""

    realtime: RealtimeOffers
    distributed: DistributedOffers
    reports: ReportPages


def offers_capability() -> OffersCapability:
    return current_app.extensions[EXTENSION]


def init_app(app: Flask) -> OffersCapability:
    """Partner clients for real-time offers, Celery wiring for distributed runs (Celery itself is
    imported on first use), the report pages' cache."""
    from services.offers.partners.registry import load_registry, registry_readiness
    from services.offers.runs.distributed.celery_app import CelerySettings

    built = runtime(app)
    cfg = app.config
    built.readiness_checks["partners"] = registry_readiness(cfg["PARTNERS_FILE"], cfg["SERVICE_URL"],
                                                              cfg["OFFERS_DEFAULT_PARTNER"])
    own_reference = (cfg["SERVICE_URL"].rstrip("/") + cfg["REFERENCE_PARTNER_PREFIX"].rstrip("/")
                     if cfg["REFERENCE_PARTNER_ENABLED"] else None)
    realtime = RealtimeOffers(cfg["PARTNERS_FILE"], cfg["OFFERS_REALTIME_DEADLINE_S"], service_url=cfg["SERVICE_URL"],
                              own_reference_url=own_reference)
    built.closers.append(realtime.close)

    def partner_config(name: str):
        return load_registry(cfg["PARTNERS_FILE"], cfg["SERVICE_URL"]).get(name)

    distributed = DistributedOffers(
        CelerySettings(broker_url=cfg["CELERY_BROKER_URL"], result_backend=cfg["CELERY_RESULT_BACKEND"],
                       visibility_timeout_s=cfg["CELERY_VISIBILITY_TIMEOUT_S"],
                       chunk_max_attempts=cfg["OFFERS_CHUNK_MAX_ATTEMPTS"],
                       chunk_heartbeat_s=cfg["OFFERS_CHUNK_HEARTBEAT_S"]),
        context_factory=app.app_context, sessions=built.session_factory, partner_config=partner_config)
    capability = app.extensions[EXTENSION] = OffersCapability(realtime=realtime, distributed=distributed,
                                                              reports=ReportPages())
    return capability


def celery_app(app: Flask):  # noqa: ANN201 - a Celery app; Celery is imported only when this is called
    """The Celery app of distributed runs (``celery -A wsgi:celery_app worker``), built on first use."""
    return app.extensions[EXTENSION].distributed.celery
