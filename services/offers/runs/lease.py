"""Run leases: one live process per offers run, and dead runs recognised by a stale heartbeat.

The process running a run writes its name in ``lease_owner`` and refreshes ``heartbeat_at``
every HEARTBEAT_S.  A run still ``running`` whose heartbeat is older than LEASE_S is dead (the
process was SIGKILLed, or its machine lost): it is shown as ``abandoned`` and may be resumed.
Claiming is one conditional UPDATE, atomic on SQLite and PostgreSQL alike, so of two
``--resume`` of one run exactly one wins.

This module commits on its own: a heartbeat must reach the database whatever the run's own
transactions are doing.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.orm import sessionmaker

from services.offers.statuses import RunStatus
from services.tables import OfferRun, utcnow

log = logging.getLogger("courier.offers")

HEARTBEAT_S = 5.0
# Six missed heartbeats: a run paused by a long database lock or a stopped VM is not declared
# dead for a hiccup, and a killed run can be resumed half a minute later.
LEASE_S = 30.0
RUNNING = RunStatus.RUNNING
ABANDONED = RunStatus.ABANDONED


def new_owner() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def is_dead(run: OfferRun, now: datetime | None = None) -> bool:
    """A ``running`` run whose owner stopped beating (or that predates leases)."""
    if run.status != RUNNING:
        return False
    if run.heartbeat_at is None:
        return True
    beat = run.heartbeat_at if run.heartbeat_at.tzinfo else run.heartbeat_at.replace(tzinfo=(now or utcnow()).tzinfo)
    return (now or utcnow()) - beat > timedelta(seconds=LEASE_S)


def shown_status(run: OfferRun) -> str:
    """The status to report: a dead ``running`` run is ``abandoned`` (resumable)."""
    return ABANDONED if is_dead(run) else run.status


def claim(sessions: sessionmaker, run_id: int, owner: str) -> bool:
    """Take the run for ``owner`` unless a live process holds it; True when taken."""
    now = utcnow()
    stale = now - timedelta(seconds=LEASE_S)
    with sessions() as session, session.begin():
        taken = session.execute(
            update(OfferRun)
            .where(OfferRun.id == run_id,
                   or_(OfferRun.status != RUNNING, OfferRun.heartbeat_at.is_(None), OfferRun.heartbeat_at < stale))
            .values(status=RUNNING.value, lease_owner=owner, heartbeat_at=now, error=None)
            .execution_options(synchronize_session=False)
        ).rowcount
    return taken == 1


def beat(sessions: sessionmaker, run_id: int, owner: str) -> bool:
    """Refresh the heartbeat; False when another process holds the lease now."""
    with sessions() as session, session.begin():
        return session.execute(
            update(OfferRun).where(OfferRun.id == run_id, OfferRun.lease_owner == owner)
            .values(heartbeat_at=utcnow()).execution_options(synchronize_session=False)
        ).rowcount == 1


class Beats(threading.Thread):
    """Calls ``beat`` every ``interval_s`` until stopped; when it answers False (what it held was
    taken), calls ``on_lost`` once and ends. A beat that raises is logged and tried again next time:
    what it keeps alive is declared dead only after several missed beats (LEASE_S)."""

    def __init__(self, name: str, beat: Callable[[], bool], on_lost: Callable[[], Any], interval_s: float,
                 what: str, log_extra: dict[str, Any]) -> None:
        super().__init__(name=name, daemon=True)
        self.beat, self.on_lost, self.interval_s = beat, on_lost, interval_s
        self.what, self.log_extra = what, log_extra
        self.stopped = threading.Event()
        self.lost = False
        self.context = contextvars.copy_context()  # log lines of this thread carry the run's id

    def run(self) -> None:
        self.context.run(self._beat)

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                if not self.beat():
                    self.lost = True
                    log.error(f"{self.what} lost to another process; stopping", extra=self.log_extra)
                    self.on_lost()
                    return
            except Exception:  # noqa: BLE001 - a missed beat is retried; the lease is 6 beats long
                log.warning(f"{self.what} heartbeat failed", extra=self.log_extra, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        if self is not threading.current_thread() and self.is_alive():
            self.join(5)


class Heartbeat(Beats):
    """The run's lease, beaten every HEARTBEAT_S until stopped; on a lost lease, ``on_lost`` (stop the run)."""

    def __init__(self, sessions: sessionmaker, run_id: int, owner: str, on_lost, interval_s: float = HEARTBEAT_S):
        super().__init__(f"offers-heartbeat-{run_id}", lambda: beat(sessions, run_id, owner), on_lost, interval_s,
                         "offers run lease", {"run_id": run_id, "owner": owner})
