"""Loyalty offers' state: real-time partner clients, distributed runs' Celery wiring, report pages."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from capabilities.runtime import runtime

if TYPE_CHECKING:
    from services.offers.partners.config import PartnerConfig
    from services.offers.realtime import RealtimeOffers
    from services.offers.reports.pages import ReportPages
    from services.offers.runs.distributed.celery_app import DistributedOffers
    from services.offers.runs.submitted import Submissions

EXTENSION = "courier.offers"


class OffersCapability:
    """Real-time offers (one member over REST), distributed runs (Celery) and the report pages.

    Each part is built on first use: real-time offers import polars and the partner clients
    (~0.1 s), the Celery wiring the coordinator; a command such as ``flask seed-venues`` or
    ``flask --help`` needs none of them.  gunicorn's workers build the real-time part in their
    warm-up, before their first request.
    """

    def __init__(self, build: dict[str, Callable[[], Any]]) -> None:
        self._build = build
        self._built: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _part(self, name: str) -> Any:
        part = self._built.get(name)
        if part is None:
            with self._lock:
                part = self._built.get(name)
                if part is None:
                    part = self._built[name] = self._build[name]()
        return part

    @property
    def realtime(self) -> RealtimeOffers:
        return self._part("realtime")

    @property
    def distributed(self) -> DistributedOffers:
        return self._part("distributed")

    @property
    def submissions(self) -> Submissions:
        return self._part("submissions")

    @property
    def reports(self) -> ReportPages:
        return self._part("reports")

    def close(self) -> None:
        realtime = self._built.get("realtime")
        if realtime is not None:
            realtime.close()


def offers_capability() -> OffersCapability:
    return current_app.extensions[EXTENSION]


def init_app(app: Flask) -> OffersCapability:
    """Partner readiness now; real-time partner clients, Celery wiring for distributed runs and the
    report pages' cache when first used."""
    from services.offers.partners.registry import registry_readiness

    built = runtime(app)
    cfg = app.config
    built.readiness_checks["partners"] = registry_readiness(cfg["PARTNERS_FILE"], cfg["SERVICE_URL"],
                                                              cfg["OFFERS_DEFAULT_PARTNER"])

    def realtime() -> RealtimeOffers:
        from services.offers.realtime import RealtimeOffers

        own_reference = (cfg["SERVICE_URL"].rstrip("/") + cfg["REFERENCE_PARTNER_PREFIX"].rstrip("/")
                         if cfg["REFERENCE_PARTNER_ENABLED"] else None)
        return RealtimeOffers(cfg["PARTNERS_FILE"], cfg["OFFERS_REALTIME_DEADLINE_S"],
                              service_url=cfg["SERVICE_URL"], own_reference_url=own_reference)

    def partner_config(name: str) -> PartnerConfig:
        """The partner from the registry file as it is now (a worker or upload sees an edited file)."""
        from services.offers.partners.registry import load_registry

        return load_registry(cfg["PARTNERS_FILE"], cfg["SERVICE_URL"]).get(name)

    def distributed() -> DistributedOffers:
        from services.offers.runs.distributed.celery_app import CelerySettings, DistributedOffers, RunSettings

        return DistributedOffers(
            CelerySettings(broker_url=cfg["CELERY_BROKER_URL"], result_backend=cfg["CELERY_RESULT_BACKEND"],
                           visibility_timeout_s=cfg["CELERY_VISIBILITY_TIMEOUT_S"],
                           chunk_max_attempts=cfg["OFFERS_CHUNK_MAX_ATTEMPTS"],
                           chunk_heartbeat_s=cfg["OFFERS_CHUNK_HEARTBEAT_S"]),
            context_factory=app.app_context, sessions=built.session_factory, partner_config=partner_config,
            run_settings=RunSettings(chunk_size=cfg["OFFERS_CHUNK_SIZE"], stall_s=cfg["OFFERS_DISTRIBUTED_STALL_S"],
                                     silent_s=cfg["OFFERS_CHUNK_SILENT_S"],
                                     max_consecutive_failures=cfg["OFFERS_MAX_CONSECUTIVE_FAILURES"],
                                     database_outage_s=cfg["OFFERS_DATABASE_OUTAGE_S"]))

    def reports() -> ReportPages:
        from services.offers.reports.pages import ReportPages

        return ReportPages()

    def submissions() -> Submissions:
        from config import default_database_folder
        from services.offers.runs.submitted import Submissions
        from services.offers.runs.uploads import UploadStore

        uploads = UploadStore(cfg["OFFERS_UPLOAD_DIR"] or default_database_folder() / "uploads",
                              cfg["OFFERS_UPLOAD_MAX_BYTES"], cfg["OFFERS_UPLOAD_RETENTION_DAYS"] * 86400)
        return Submissions(built.session_factory, uploads, lambda: capability.distributed.queue(),
                           built.engine.dialect.name, partner_config, cfg["OFFERS_DEFAULT_PARTNER"],
                           cfg["OFFERS_CHUNK_SIZE"])

    capability = app.extensions[EXTENSION] = OffersCapability(
        {"realtime": realtime, "distributed": distributed, "reports": reports, "submissions": submissions})
    built.closers.append(capability.close)
    built.warmers["realtime_offers"] = lambda: capability.realtime
    return capability


def celery_app(app: Flask):  # noqa: ANN201 - a Celery app; Celery is imported only when this is called
    """The Celery app of distributed runs (``celery -A wsgi:celery_app worker``), built on first use."""
    return app.extensions[EXTENSION].distributed.celery
