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
    """Insert or update in one statement (``INSERT ... ON CONFLICT (slug) DO UPDATE``); returns True
    when the venue was not stored before.

    One statement, because two workers pricing the same new venue at once both found no row and
    both inserted: the second write failed on the primary key and logged an ERROR although the
    answer was fine.
    """
    existing = session.get(Venue, data.slug)
    values = {
        "latitude": data.static.latitude, "longitude": data.static.longitude,
        "static_fetched_at": data.static_fetched_at,
        "order_minimum_no_surcharge": data.dynamic.order_minimum_no_surcharge,
        "base_price": data.dynamic.base_price, "distance_ranges": ranges_to_json(data.dynamic.distance_ranges),
        "dynamic_fetched_at": data.dynamic_fetched_at, "updated_at": utcnow(),
    }
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]  # the other dialect we run on
    session.execute(insert(Venue).values(slug=data.slug, **values)
                    .on_conflict_do_update(index_elements=[Venue.slug], set_=values))
    if existing is not None:
        session.expire(existing)  # the row now holds what was just written
    return existing is None


def known_slugs(session: Session) -> list[str]:
    return list(session.scalars(select(Venue.slug).order_by(Venue.slug)))
