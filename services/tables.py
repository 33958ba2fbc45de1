"""Every table Courier owns (SQLAlchemy 2 typed ORM classes).  Alembic compares ``Base.metadata`` with these.

Named ``tables``, not ``models``: in Courier "model" means the estimate's tree model (and the
reference partner's formulas are ``reference.formulas``), one meaning per name.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.db import Base

__all__ = ["ApiKey", "Base", "DataVersion", "OfferResult", "OfferRun", "Venue", "VenuePrepTime", "utcnow"]


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


class OfferRun(Base):
    """One `flask run-offers` execution: what went in, how it went, and step metrics."""

    __tablename__ = "offer_runs"
    # A client's retry with the same Idempotency-Key finds its run (NULLs never collide: CLI runs).
    __table_args__ = (Index("ux_offer_runs_idempotency", "requested_by", "idempotency_key", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    partner: Mapped[str] = mapped_column(String(64), nullable=False)
    input_path: Mapped[str] = mapped_column(Text, nullable=False)
    input_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    as_of: Mapped[date] = mapped_column(Date, nullable=False)
    # running / succeeded / completed_with_failures / failed / interrupted (services.offers.statuses)
    status: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    concurrency: Mapped[int] = mapped_column(Integer, nullable=False)
    rows_read: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    rows_rejected: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    members_total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    members_scored: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    members_skipped: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    members_failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    offers: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    rejected: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)  # counts by reason + sample rows
    step_metrics: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # The process running it ("host:pid:nonce") and its last sign of life: a run "running" whose
    # heartbeat is older than the lease is dead (killed), and may be resumed by one process.
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # [[seconds since the attempt started, members recorded], ...] of the latest attempt, at most
    # TIMELINE_POINTS long: the report's "members completed over time" (migration 0008).
    timeline: Mapped[list | None] = mapped_column(JSON)
    # "local" (one process) or "distributed" (chunk tasks on Celery workers, see OfferRunChunk).
    mode: Mapped[str] = mapped_column(String(16), nullable=False, default="local", server_default="local")
    chunk_size: Mapped[int | None] = mapped_column(Integer)  # distributed runs: members per chunk
    # Runs submitted over REST or the web view (migration 0013): "cli" or "api"; the API key that
    # asked; its Idempotency-Key (unique per key); how to score (the CLI passes it on each attempt);
    # when a cancel was asked (the coordinator stops at its next look); the uploaded input's size and name.
    source: Mapped[str] = mapped_column(String(8), nullable=False, default="cli", server_default="cli")
    requested_by: Mapped[str | None] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    use_batch: Mapped[bool | None] = mapped_column(Boolean)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    input_bytes: Mapped[int | None] = mapped_column(BigInteger)
    input_name: Mapped[str | None] = mapped_column(String(255))  # the uploaded file's own name, when it had one


class OfferResult(Base):
    """One member's outcome in one run: features, predictions, offer, per-call latency."""

    __tablename__ = "offer_results"
    __table_args__ = (
        Index("ix_offer_results_run_status", "run_id", "status"),
        Index("ix_offer_results_run_offer", "run_id", "offer"),
    )

    # One result per member and run, found by run and member: no surrogate key (see migration 0012).
    run_id: Mapped[int] = mapped_column(ForeignKey("offer_runs.id", ondelete="CASCADE"), primary_key=True)
    # Byte order on every database (migration 0014): SQLite compares text by its bytes; PostgreSQL
    # compares by the database's collation unless told "C". Pages, the export and ``--output`` from
    # recorded results (polars sorts by bytes) then agree everywhere.
    member_id: Mapped[str] = mapped_column(String(128).with_variant(String(128, collation="C"), "postgresql"),
                                           primary_key=True)
    avg_points_bought: Mapped[float | None] = mapped_column(Float)
    avg_revenue_usd: Mapped[float | None] = mapped_column(Float)
    last_3_transactions_avg_points_bought: Mapped[float | None] = mapped_column(Float)
    last_3_transactions_avg_revenue_usd: Mapped[float | None] = mapped_column(Float)
    pct_buy_transactions: Mapped[float | None] = mapped_column(Float)
    pct_gift_transactions: Mapped[float | None] = mapped_column(Float)
    pct_redeem_transactions: Mapped[float | None] = mapped_column(Float)
    days_since_last_transaction: Mapped[int | None] = mapped_column(Integer)
    extra_features: Mapped[dict | None] = mapped_column(JSON)  # registry features beyond the standard 8
    ats_prediction: Mapped[float | None] = mapped_column(Float)
    resp_prediction: Mapped[float | None] = mapped_column(Float)
    offer: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # scored/skipped/failed
    error: Mapped[str | None] = mapped_column(Text)
    ats_ms: Mapped[float | None] = mapped_column(Float)
    resp_ms: Mapped[float | None] = mapped_column(Float)
    offer_ms: Mapped[float | None] = mapped_column(Float)


class OfferRunChunk(Base):
    """One chunk task of a distributed run: its members' features, where it stands, what it measured.

    The features live here (not in the task message, not on shared disk): the database is already
    shared by every worker and durable, and the broker only carries ``(run_id, chunk_no)``.
    """

    __tablename__ = "offer_run_chunks"
    __table_args__ = (Index("ix_offer_run_chunks_run_status", "run_id", "status"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("offer_runs.id", ondelete="CASCADE"), primary_key=True)
    chunk_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # pending / running / done / failed
    members: Mapped[int] = mapped_column(Integer, nullable=False)
    # The members to score (member_id and features) as Arrow IPC; None once the chunk is done or its run
    # ended (a resume restores it from the input).
    inputs: Mapped[bytes | None] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    task_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    stats: Mapped[dict | None] = mapped_column(JSON)  # step histograms and seconds, merged by the coordinator
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set at claim and every few seconds while the claiming worker scores: a claim gone silent
    # (worker killed, or its attempt ended without a word) is taken again by the coordinator.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """A key a client presents for member-level data; only a salted hash of its secret is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # public part of the key, shown by `list`
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    scopes: Mapped[str] = mapped_column(String(200), nullable=False)  # space-separated
    salt: Mapped[str] = mapped_column(String(32), nullable=False)  # hex
    secret_sha256: Mapped[str] = mapped_column(String(64), nullable=False)  # hex of sha256(salt + secret)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
