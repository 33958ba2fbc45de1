"""Persistence of venue data (the ``venues`` table). Callers own the transaction."""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.pricing.venue_data import (
    DynamicVenue,
    StaticVenue,
    VenueData,
    ranges_from_json,
    ranges_to_json,
)
from services.tables import Venue, utcnow


def _aware(dt):
    # SQLite hands back naive datetimes even for timezone=True columns; they were stored as UTC.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def load_venue(session: Session, slug: str) -> VenueData | None:
    row = session.get(Venue, slug)
    if row is None:
        return None
    return VenueData(
        slug=row.slug,
        static=StaticVenue(latitude=row.latitude, longitude=row.longitude),
        static_fetched_at=_aware(row.static_fetched_at),
        dynamic=DynamicVenue(order_minimum_no_surcharge=row.order_minimum_no_surcharge, base_price=row.base_price,
                             distance_ranges=ranges_from_json(row.distance_ranges)),
        dynamic_fetched_at=_aware(row.dynamic_fetched_at),
    )


def upsert_venue(session: Session, data: VenueData) -> bool:
    """Insert or update; returns True when the venue was new."""
    existing = session.get(Venue, data.slug)
    created = existing is None
    row = existing if existing is not None else Venue(slug=data.slug)
    if created:
        session.add(row)
    row.latitude = data.static.latitude
    row.longitude = data.static.longitude
    row.static_fetched_at = data.static_fetched_at
    row.order_minimum_no_surcharge = data.dynamic.order_minimum_no_surcharge
    row.base_price = data.dynamic.base_price
    row.distance_ranges = ranges_to_json(data.dynamic.distance_ranges)
    row.dynamic_fetched_at = data.dynamic_fetched_at
    row.updated_at = utcnow()
    session.flush()
    return created


def known_slugs(session: Session) -> list[str]:
    return list(session.scalars(select(Venue.slug).order_by(Venue.slug)))
