"""Offer runs submitted over REST or the web view: queued, coordinated on a Celery worker, cancelled
and resumed by request.

    POST (upload stored, checked) -> run recorded ``queued`` -> coordinator task on the runs queue
    -> ``coordinate``: the run frame with the distributed executor, as ``flask run-offers
    --distributed --resume N`` would run it -> chunk tasks on the chunk workers -> final status

A submitted run is an ordinary run record (``source = "api"``): the same frame, chunks, results,
report and export as one started by the CLI. What differs is who coordinates it (a worker on the
``courier.runs`` queue instead of a shell) and how it is stopped: ``cancel`` marks the run, and the
coordinator's ``CancelWatch`` (``coordination.py``) sets the frame's stop event, as Ctrl-C does for the CLI.

``submit`` and ``resume`` commit on their own before queueing the coordinator task: the task must
find the committed row, and a task queued for a rolled-back row would be lost work. The other
functions leave the transaction to their caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.errors import Unprocessable
from services.offers.partners.config import PartnerConfig
from services.offers.runs.errors import DistributedUnavailable, RunConflict, RunsUnavailable
from services.offers.runs.lease import is_dead
from services.offers.runs.recording import get_run
from services.offers.statuses import RunStatus
from services.tables import OfferRun, utcnow

if TYPE_CHECKING:  # polars comes with them: loaded by the first upload, not when the app starts
    from services.offers.runs.uploads import StoredInput, UploadStore

log = logging.getLogger("courier.offers.submitted")

SOURCE = "api"
ENDED = frozenset({RunStatus.SUCCEEDED, RunStatus.COMPLETED_WITH_FAILURES, RunStatus.FAILED, RunStatus.INTERRUPTED})


class RunStarter(Protocol):
    """Where coordinator tasks go (Celery's runs queue in production)."""

    def check(self) -> None:
        """Raise (``DistributedUnavailable``, saying what to set) when tasks cannot be queued now."""

    def start_run(self, run_id: int) -> None:
        """Queue the coordinator task of ``run_id``."""


@dataclass(frozen=True)
class Submission:
    """What a client asked for, beside the file."""

    partner: str
    as_of: date
    use_batch: bool
    chunk_size: int
    concurrency: int
    requested_by: str | None  # the API key's id (None when runs:write is an open scope)
    idempotency_key: str | None = None
    input_name: str | None = None  # the file's own name (a form upload's), for people


@dataclass(frozen=True)
class Submitted:
    run: OfferRun
    replayed: bool  # an earlier request with the same Idempotency-Key made it


def check_available(database_dialect: str, starter_factory: Callable[[], RunStarter]) -> RunStarter:
    """The starter, once a run could be coordinated from here: a database every worker shares, and a
    broker that answers. ``RunsUnavailable`` says what to set."""
    if database_dialect == "sqlite":
        raise RunsUnavailable("Offer runs over REST execute on Celery workers, which need a database they all "
                              "share and a broker: set COURIER_DATABASE_URL to PostgreSQL and "
                              "COURIER_CELERY_BROKER_URL to the workers' broker (`flask run-offers` works "
                              "without either).", details={"setting": "COURIER_DATABASE_URL"})
    try:
        starter = starter_factory()
        starter.check()
    except DistributedUnavailable as exc:
        raise RunsUnavailable(f"Offer runs cannot be queued: {exc}.",
                              details={"setting": "COURIER_CELERY_BROKER_URL"}) from None
    return starter


def _same_request(run: OfferRun, stored: StoredInput, submission: Submission) -> bool:
    return (run.input_sha256, run.partner, run.as_of, bool(run.use_batch), run.chunk_size) == (
        stored.sha256, submission.partner, submission.as_of, submission.use_batch, submission.chunk_size)


def _by_idempotency_key(session: Session, submission: Submission) -> OfferRun | None:
    requested_by = (OfferRun.requested_by.is_(None) if submission.requested_by is None
                    else OfferRun.requested_by == submission.requested_by)
    return session.scalars(select(OfferRun).where(requested_by,
                                                  OfferRun.idempotency_key == submission.idempotency_key)).first()


def _replay(run: OfferRun, stored: StoredInput, submission: Submission) -> Submitted:
    if not _same_request(run, stored, submission):
        raise Unprocessable(f"Idempotency-Key {submission.idempotency_key!r} was used for run {run.id} with another "
                            "input or options; use a new key for a new run.", code="idempotency_key_reused",
                            details={"run_id": run.id, "idempotency_key": submission.idempotency_key})
    return Submitted(run, replayed=True)


def submit(sessions: sessionmaker, stored: StoredInput, submission: Submission, starter: RunStarter) -> Submitted:
    """Record the run ``queued`` (or find the one this Idempotency-Key made) and queue its coordinator."""
    if submission.idempotency_key is not None:
        with sessions() as session:
            earlier = _by_idempotency_key(session, submission)
            if earlier is not None:
                return _replay(earlier, stored, submission)
    try:
        with sessions() as session, session.begin():
            run = OfferRun(partner=submission.partner, input_path=str(stored.path), input_sha256=stored.sha256,
                           as_of=submission.as_of, status=RunStatus.QUEUED.value, concurrency=submission.concurrency,
                           offers={}, rejected={}, step_metrics={}, mode="distributed",
                           chunk_size=submission.chunk_size, source=SOURCE, requested_by=submission.requested_by,
                           idempotency_key=submission.idempotency_key, use_batch=submission.use_batch,
                           input_bytes=stored.size, input_name=submission.input_name)
            session.add(run)
            session.flush()
            session.expunge(run)
    except IntegrityError:  # the same key, at the same moment, from a retry that raced this one
        with sessions() as session:
            earlier = _by_idempotency_key(session, submission)
            if earlier is None:
                raise
            return _replay(earlier, stored, submission)
    _queue(sessions, run, starter)
    log.info("offers run submitted", extra={"run_id": run.id, "partner": run.partner, "bytes": stored.size,
                                            "requested_by": submission.requested_by})
    return Submitted(run, replayed=False)


def _queue(sessions: sessionmaker, run: OfferRun, starter: RunStarter) -> None:
    """Queue the coordinator; if the broker refuses now, the run is failed (not left queued for ever)."""
    try:
        starter.start_run(run.id)
    except Exception as exc:  # noqa: BLE001 - any failure to send means the same to the client
        message = f"the coordinator task could not be queued ({type(exc).__name__}: {exc})"
        with sessions() as session, session.begin():
            session.execute(update(OfferRun).where(OfferRun.id == run.id, OfferRun.status == RunStatus.QUEUED)
                            .values(status=RunStatus.FAILED.value, error=message, finished_at=utcnow()))
        raise RunsUnavailable(f"Run {run.id} could not be queued: {message}; resume it when the broker is back.",
                              details={"run_id": run.id, "setting": "COURIER_CELERY_BROKER_URL"}) from None


def cancel(session: Session, run: OfferRun) -> OfferRun:
    """Stop the run: a queued (or abandoned) one ends ``interrupted`` now; a running one is marked, and its
    coordinator stops within CANCEL_POLL_S, keeping what finished. Idempotent; a run that ended
    otherwise is a conflict."""
    now = utcnow()
    if run.status == RunStatus.INTERRUPTED:
        return run
    if run.status in ENDED:
        raise RunConflict(f"Run {run.id} already ended {run.status}; there is nothing to cancel.", code="run_ended",
                          details={"run_id": run.id, "status": run.status})
    if run.status == RunStatus.QUEUED or is_dead(run):
        run.status, run.finished_at, run.error = RunStatus.INTERRUPTED.value, now, "cancelled before it started" \
            if run.status == RunStatus.QUEUED else "cancelled; its coordinator had stopped"
    if run.cancel_requested_at is None:
        run.cancel_requested_at = now
    session.flush()
    log.info("offers run cancel requested", extra={"run_id": run.id, "status": run.status})
    return run


def resume(sessions: sessionmaker, run_id: int, starter_factory: Callable[[], RunStarter],
           database_dialect: str) -> OfferRun:
    """Queue the run again to finish what it did not (as ``--resume``). A running run is left as it is;
    a queued one has its coordinator task sent again (the first may have been lost with a broker
    restarted without persistence; a second coordinator finds the run held and stops at its claim).
    Idempotent either way."""
    with sessions() as session:
        run = get_run(session, run_id)
        session.expunge(run)
    if run.status == RunStatus.RUNNING and not is_dead(run):
        return run
    if run.status == RunStatus.QUEUED:
        _queue(sessions, run, check_available(database_dialect, starter_factory))
        return run
    if run.status == RunStatus.SUCCEEDED:
        raise RunConflict(f"Run {run.id} already succeeded; there is nothing to resume.", code="run_ended",
                          details={"run_id": run.id, "status": run.status})
    if run.source != SOURCE:
        raise RunConflict(f"Run {run.id} was started by `flask run-offers`, which reads its input from that "
                          f"machine: resume it there with --resume {run.id}.", code="resume_with_cli",
                          details={"run_id": run.id})
    if not Path(run.input_path).is_file():
        raise RunConflict(f"Run {run.id}'s uploaded input was removed after its retention "
                          "(COURIER_OFFERS_UPLOAD_RETENTION_DAYS); start a new run.", code="input_removed",
                          details={"run_id": run.id})
    starter = check_available(database_dialect, starter_factory)
    with sessions() as session, session.begin():
        resumable = or_(OfferRun.status.in_([RunStatus.INTERRUPTED, RunStatus.FAILED,
                                             RunStatus.COMPLETED_WITH_FAILURES]),
                        OfferRun.status == RunStatus.RUNNING)  # dead: checked above, claimed under the lease
        session.execute(update(OfferRun).where(OfferRun.id == run_id, resumable, OfferRun.status == run.status)
                        .values(status=RunStatus.QUEUED.value, cancel_requested_at=None, error=None,
                                finished_at=None, heartbeat_at=None))
        run = session.get(OfferRun, run_id)
        session.expunge(run)
    if run.status == RunStatus.QUEUED:
        _queue(sessions, run, starter)
        log.info("offers run resume requested", extra={"run_id": run.id})
    return run


def kept_inputs(session: Session, cutoff: datetime) -> list[str]:
    """sha256s of the uploaded inputs some run still needs: not ended, or ended after ``cutoff``."""
    return list(session.scalars(select(OfferRun.input_sha256).where(
        OfferRun.source == SOURCE,
        or_(OfferRun.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]), OfferRun.finished_at.is_(None),
            OfferRun.finished_at > cutoff)).distinct()))


@dataclass(frozen=True)
class RunRequest:
    """A client's options for a new run (the file comes apart, as a stream)."""

    partner: str | None
    as_of: date
    use_batch: bool
    chunk_size: int | None
    requested_by: str | None
    idempotency_key: str | None = None


class Submissions:
    """What the REST API and the web view call to start, cancel and resume runs: one place, so runs
    started either way are the same records."""

    def __init__(self, sessions: sessionmaker, uploads: UploadStore, starter_factory: Callable[[], RunStarter],
                 database_dialect: str, partner_config: Callable[[str], PartnerConfig], default_partner: str,
                 default_chunk_size: int) -> None:
        self.sessions, self.uploads, self.starter_factory = sessions, uploads, starter_factory
        self.database_dialect, self.partner_config = database_dialect, partner_config
        self.default_partner, self.default_chunk_size = default_partner, default_chunk_size

    def start(self, stream: BinaryIO, name: str | None, request: RunRequest) -> Submitted:
        """Check the partner and that runs can execute, store the upload (InputError naming the line,
        UploadTooLarge), record the run and queue it. Nothing is queued for a refused input."""
        from services.http.transport import ProxyNotSupported, check_proxy
        from services.offers.partners.config import PartnerConfigError

        partner_name = request.partner or self.default_partner
        partner = self.partner_config(partner_name)  # NotFound (404 partner_not_found) before the upload is read
        try:
            partner.headers()  # a partner without its secret cannot be scored: refused now, not at the first call
            check_proxy(partner.base_url)
        except (PartnerConfigError, ProxyNotSupported) as exc:
            raise RunsUnavailable(f"Partner {partner_name!r} cannot be called from here: {exc}",
                                  code="partner_misconfigured", details={"partner": partner_name}) from None
        starter = check_available(self.database_dialect, self.starter_factory)
        stored = self.uploads.save(stream, name or "the body")
        submission = Submission(partner=partner_name, as_of=request.as_of, use_batch=request.use_batch,
                                chunk_size=request.chunk_size or self.default_chunk_size,
                                concurrency=partner.max_concurrency, requested_by=request.requested_by,
                                idempotency_key=request.idempotency_key,
                                input_name=name[-255:] if name else None)
        submitted = submit(self.sessions, stored, submission, starter)
        self.prune()
        return submitted

    def cancel(self, session: Session, run: OfferRun) -> OfferRun:
        return cancel(session, run)

    def resume(self, run_id: int) -> OfferRun:
        return resume(self.sessions, run_id, self.starter_factory, self.database_dialect)

    def prune(self) -> list[str]:
        """Remove uploads past their retention (a scan of the folder; the database only when one is old)."""
        def kept(cutoff: float) -> list[str]:
            with self.sessions() as session:
                return kept_inputs(session, datetime.fromtimestamp(cutoff, UTC))

        try:
            return self.uploads.prune(kept)
        except Exception:  # noqa: BLE001 - tidying must never fail the request that triggered it
            log.warning("could not prune uploaded inputs", exc_info=True)
            return []
