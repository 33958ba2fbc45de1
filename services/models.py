"""Every table Courier owns (SQLAlchemy 2 typed models). Alembic compares ``Base.metadata`` with these."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, DateTime, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.db import Base

__all__ = ["Base", "DataVersion", "Venue", "VenuePrepTime", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class DataVersion(Base):
    """A counter per reference data set, bumped on every change, so each worker can tell
    cheaply (one primary-key read) whether its in-memory copy is outdated."""

    __tablename__ = "data_versions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class VenuePrepTime(Base):
    """Average preparation time of a venue, in minutes: a feature of the delivery-time model."""

    __tablename__ = "venue_prep_times"

    venue_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    avg_preparation_time: Mapped[float] = mapped_column(Float, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class Venue(Base):
    """Last good venue data from the venue API (or a bundled snapshot), per half with its fetch time."""

    __tablename__ = "venues"

    slug: Mapped[str] = mapped_column(String(128), primary_key=True)
    latitude: Mapped[float] = mapped_column(Float, nullable=False)
    longitude: Mapped[float] = mapped_column(Float, nullable=False)
    static_fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    order_minimum_no_surcharge: Mapped[int] = mapped_column(BigInteger, nullable=False)
    base_price: Mapped[int] = mapped_column(BigInteger, nullable=False)
    distance_ranges: Mapped[list] = mapped_column(JSON, nullable=False)
    dynamic_fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
