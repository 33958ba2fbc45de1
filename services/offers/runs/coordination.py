"""The coordinator task's body for runs submitted over REST or the web view: the run frame with the
distributed executor, as ``flask run-offers --distributed --resume N`` runs it, on a worker of the
``courier.runs`` queue (``distributed/celery_app.py`` wires it).

It takes a run that is ``queued`` (or ``running`` under a dead lease), leaves any other alone, and
stops the frame when the run's cancel is asked for (``CancelWatch``, the REST counterpart of Ctrl-C)
or when its worker shuts down (then the run goes back to the queue). This module commits on its own
(the run's first sign of life, a failure before the frame, the hand-back), as the frame does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from services.offers.partners.config import PartnerConfig
from services.offers.runs.lease import is_dead
from services.offers.runs.submitted import RunStarter
from services.offers.statuses import RunStatus
from services.tables import OfferRun, utcnow

log = logging.getLogger("courier.offers.submitted")

CANCEL_POLL_S = 1.0  # how often a coordinator looks for a cancel: one primary-key read a second


class CancelWatch(threading.Thread):
    """Sets ``stop`` once the run's cancel is asked for (read every CANCEL_POLL_S), or once its
    worker is shutting down (``shutdown``; then ``handed_back``: the run goes back to the queue)."""

    def __init__(self, sessions: sessionmaker, run_id: int, stop: threading.Event,
                 shutdown: threading.Event | None = None) -> None:
        super().__init__(name=f"offers-cancel-watch-{run_id}", daemon=True)
        self.sessions, self.run_id, self.stop, self.done = sessions, run_id, stop, threading.Event()
        self.shutdown = shutdown or threading.Event()
        self.handed_back = False

    def asked(self) -> bool:
        with self.sessions() as session:
            return session.scalar(select(OfferRun.cancel_requested_at).where(OfferRun.id == self.run_id)) is not None

    def run(self) -> None:
        while not self.done.wait(CANCEL_POLL_S):
            if self.shutdown.is_set():
                log.info("coordinator shutting down: the run goes back to the queue", extra={"run_id": self.run_id})
                self.handed_back = True
                self.stop.set()
                return
            try:
                if self.asked():
                    log.info("offers run cancelled", extra={"run_id": self.run_id})
                    self.stop.set()
                    return
            except Exception:  # noqa: BLE001 - a database hiccup: look again next time
                log.warning("could not look for a cancel", extra={"run_id": self.run_id}, exc_info=True)

    def close(self) -> None:
        self.done.set()


@dataclass(frozen=True)
class CoordinationSettings:
    max_consecutive_failures: int
    database_outage_s: float


def coordinate(sessions: sessionmaker, run_id: int, partner_config: Callable[[str], PartnerConfig],
               run_distributed_frame: Callable[..., Any], settings: CoordinationSettings,
               starter: RunStarter | None = None, shutdown: threading.Event | None = None) -> str:
    """The coordinator task's body: run ``run_id``'s frame with the distributed executor (through
    ``run_distributed_frame(partner, options, stop=...)``) unless it was cancelled, ended, or is held by a
    live coordinator; what happened, in a word, for the task's result.

    ``shutdown`` (set when the worker is asked to stop, e.g. a deploy): the run stops as a cancel
    would, keeping what finished, and is queued again through ``starter``, so another coordinator
    (or this one, restarted) resumes it; nobody has to notice and resume it by hand."""
    from services.offers.features.input import InputError
    from services.offers.runs.lifecycle import ResumeError, RunOptions

    with sessions() as session:
        run = session.get(OfferRun, run_id)
        if run is None:
            return "missing"
        if run.status != RunStatus.QUEUED and not is_dead(run):
            return "not queued"  # cancelled before it started, already running elsewhere, or ended
        session.expunge(run)
    try:
        partner = partner_config(run.partner)
    except Exception as exc:  # noqa: BLE001 - this worker's registry cannot score the run: say why on the run
        _fail(sessions, run_id, f"the coordinator cannot load partner {run.partner!r}: {getattr(exc, 'message', exc)}")
        return "failed"
    options = RunOptions(input_path=run.input_path, partner=run.partner, as_of=run.as_of,
                         concurrency=run.concurrency, resume_run_id=run_id,
                         max_consecutive_failures=settings.max_consecutive_failures,
                         use_batch=bool(run.use_batch), database_outage_s=settings.database_outage_s)
    stop = threading.Event()
    watch = CancelWatch(sessions, run_id, stop, shutdown)
    if watch.asked():
        return "cancelled"
    # A sign of life while the input is read (seconds for a large file; the frame claims the run
    # after): the record says "reading the input" instead of "waiting for a coordinator".
    with sessions() as session, session.begin():
        session.execute(update(OfferRun).where(OfferRun.id == run_id, OfferRun.status == RunStatus.QUEUED)
                        .values(heartbeat_at=utcnow()))
    watch.start()
    try:
        report = run_distributed_frame(partner, options, stop=stop)
    except ResumeError as exc:  # another coordinator holds it (a duplicate message): it goes on there
        log.info("offers run not coordinated here", extra={"run_id": run_id, "reason": str(exc)})
        return "held elsewhere"
    except InputError as exc:
        _fail(sessions, run_id, str(exc))
        return "failed"
    finally:
        watch.close()
    if watch.handed_back and report.run.status == RunStatus.INTERRUPTED and starter is not None:
        with sessions() as session, session.begin():
            handed = session.execute(update(OfferRun).where(OfferRun.id == run_id,
                                                            OfferRun.status == RunStatus.INTERRUPTED,
                                                            OfferRun.cancel_requested_at.is_(None))
                                     .values(status=RunStatus.QUEUED.value, finished_at=None,
                                             heartbeat_at=None)).rowcount
        if handed:
            starter.start_run(run_id)
            return "handed back"
    return str(report.run.status)


def _fail(sessions: sessionmaker, run_id: int, error: str) -> None:
    with sessions() as session, session.begin():
        session.execute(update(OfferRun).where(OfferRun.id == run_id, OfferRun.status == RunStatus.QUEUED)
                        .values(status=RunStatus.FAILED.value, error=error, finished_at=utcnow()))
    log.error("offers run failed before it started", extra={"run_id": run_id, "error": error})
