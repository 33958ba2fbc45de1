"""Delivery order pricing's state: the venue store (memory, database, venue API)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from capabilities.runtime import runtime
from services.pricing.venue_store import VenueStore

EXTENSION = "courier.pricing"


@dataclass(frozen=True)
class PricingCapability:
    """What the pricing endpoint uses: the venue store (memory, database, venue API)."""

    venues: VenueStore


def pricing_capability() -> PricingCapability:
    return current_app.extensions[EXTENSION]


def init_app(app: Flask) -> PricingCapability:
    """The venue API client (when ``COURIER_VENUE_API_URL`` is set) and the venue store."""
    from services.pricing.price import geodesic_calculator
    from services.pricing.venue_api import VenueApiClient, venue_api_policy
    from services.pricing.venue_store import VenueCachePolicy

    built = runtime(app)
    cfg = app.config
    client = None
    if cfg["VENUE_API_URL"]:
        client = VenueApiClient(cfg["VENUE_API_URL"], venue_api_policy(
            connect_timeout_s=cfg["VENUE_API_CONNECT_TIMEOUT_S"], read_timeout_s=cfg["VENUE_API_READ_TIMEOUT_S"],
            retries=cfg["VENUE_API_RETRIES"], deadline_s=cfg["VENUE_API_DEADLINE_S"],
            pool_maxsize=cfg["HTTP_POOL_MAXSIZE"], max_answer_bytes=cfg["VENUE_API_MAX_ANSWER_BYTES"]))
    store = VenueStore(client, built.session_factory, VenueCachePolicy(
        static_ttl_s=cfg["VENUE_STATIC_TTL_S"], dynamic_ttl_s=cfg["VENUE_DYNAMIC_TTL_S"],
        max_stale_s=cfg["VENUE_MAX_STALE_S"], failure_backoff_s=cfg["VENUE_FAILURE_BACKOFF_S"],
        enabled=cfg["VENUE_CACHE_ENABLED"], wait_s=cfg["VENUE_API_DEADLINE_S"] + 0.5))
    built.closers.append(store.close)
    built.warmers["geodesic"] = geodesic_calculator  # geopy, imported here rather than by the first price
    capability = app.extensions[EXTENSION] = PricingCapability(venues=store)
    return capability
