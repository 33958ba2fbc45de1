"""The frame of every offers run, written once: open the run, ping the partner, let an executor
score, finish the run.

    features scanned -> run opened (or resumed, under its lease) -> heartbeat -> partner pinged
    -> executor.score(context) -> lease still ours? -> run finalised -> metrics counted

An executor is what differs between runs: ``LocalExecutor`` (``runs.local``: this process scores
and one writer thread records) and ``DistributedExecutor`` (``runs.distributed``: chunks on Celery
workers). A third kind (a dry run, say) is another class with ``check`` and ``score``, not a
copy of this frame. Failures are typed (``RunFailure``): callers decide on the kind, never on
the message's text.

This module commits on its own (the run record at the start, the final status at the end), as
the executors do: a run is long, and what it did must survive a crash so ``--resume`` continues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy.orm import sessionmaker

from services.db import through_outage
from services.errors import CourierError, UpstreamTimeout, UpstreamUnavailable
from services.logs import request_id_var
from services.offers.features.input import read_header
from services.offers.features.scan import FeatureScan, scan_features
from services.offers.partners.config import PartnerConfig
from services.offers.runs.lease import Heartbeat, new_owner
from services.offers.runs.lifecycle import RunOptions, count_run, file_sha256, open_run
from services.offers.runs.recording import finalise_run, members_by_status
from services.offers.runs.scoring import ping_partner
from services.offers.runs.stats import RetryTally, StepStats
from services.offers.statuses import RunStatus
from services.tables import OfferRun

log = logging.getLogger("courier.offers")

STEPS = ("read", "features", "ats", "resp", "offer", "record")  # a run's step metrics, in this order


class RunFailure(StrEnum):
    """Why a run ended ``failed``."""

    PARTNER_DOWN = "partner_down"  # the partner did not answer its ping: nothing was scored
    CIRCUIT_BREAKER = "circuit_breaker"  # too many members failed in a row
    WRITE_FAILED = "write_failed"  # results could not be recorded
    CHUNK_FAILED = "chunk_failed"  # a chunk used up its attempts (distributed)
    STALLED = "stalled"  # no chunk started or finished for the stall time (distributed)
    LEASE_LOST = "lease_lost"  # another process took the run over


@dataclass(frozen=True)
class Failure:
    kind: RunFailure
    message: str


@dataclass
class RunContext:
    """What the frame hands an executor: the opened run and its scanned input."""

    sessions: sessionmaker
    partner: PartnerConfig
    options: RunOptions
    scan: FeatureScan
    run_id: int
    owner: str
    done: set[str]  # members already recorded (a resumed run): not scored again
    stop: threading.Event
    progress_start: Callable[[int], None] | None
    progress: Callable[[int], None] | None


@dataclass
class Scored:
    """What an executor hands back."""

    step_metrics: dict[str, Any]  # the run record's step_metrics (serialisable)
    retries: RetryTally
    failure: Failure | None = None
    interrupted: bool = False
    timeline: list[list[float]] | None = None
    steps: dict[str, StepStats] = field(default_factory=dict)  # live step statistics, when the executor has them


class Executor(Protocol):
    mode: str  # recorded on the run; a run resumes only in its own mode
    chunk_size: int | None  # recorded on the run (distributed)
    lock_run_to_finish: bool  # take the run row FOR UPDATE to finish it (chunk commits hold it FOR SHARE)

    def check(self) -> None:
        """Before any work: raise (with what to fix) if this executor cannot run here."""

    def score(self, context: RunContext, scan_steps: dict[str, StepStats]) -> Scored:
        """Score every member of the context's scan not yet done; return once the run has ended."""

    def finished(self, context: RunContext, status: str | None) -> None:
        """After the final status is committed (revoke what is still queued, say)."""


@dataclass
class RunReport:
    run: OfferRun
    rows_read: int
    steps: dict[str, StepStats]
    elapsed_s: float
    interrupted: bool
    retries: RetryTally
    failure: Failure | None = None


def ping(partner: PartnerConfig) -> Failure | None:
    """The partner answers at all: a failure only when it cannot be reached or times out."""
    try:
        ping_partner(partner)
    except (UpstreamUnavailable, UpstreamTimeout) as exc:
        return Failure(RunFailure.PARTNER_DOWN,
                       f"partner {partner.name} did not answer its ping ({partner.display_url}{partner.ping_path}): "
                       f"{exc.message}; nothing was scored")
    except CourierError as exc:
        # Any other answer (a 404 or 405 from a partner without a ping route, a body that is not
        # JSON) still proves the partner is up: score, and say so in the log.
        log.warning("partner ping answered oddly; scoring anyway", extra={"partner": partner.name,
                                                                           "error": exc.message})
    return None


def run_frame(sessions: sessionmaker, partner: PartnerConfig, options: RunOptions, executor: Executor, *,
              progress_start: Callable[[int], None] | None = None, progress: Callable[[int], None] | None = None,
              stop: threading.Event | None = None) -> RunReport:
    """One run of ``options`` on ``partner``, scored by ``executor``; returns when it has ended.

    ``stop`` (set by the CLI on Ctrl-C or TERM, or by a lost lease) ends intake; the executor
    stores what finished and the run is marked ``interrupted``, resumable.
    """
    stop = stop or threading.Event()
    started = time.perf_counter()
    executor.check()
    read_header(options.input_path)  # fail fast, naming the file, before any work
    scan_steps = {name: StepStats(name) for name in ("read", "features")}
    t0 = time.perf_counter()
    # Features first: a file that is not a transaction CSV (e.g. 1 GB of NUL bytes) is refused at its
    # first overlong line instead of after hashing all of it.
    with scan_features(options.input_path, options.as_of) as scan:
        t1 = time.perf_counter()
        sha = file_sha256(options.input_path)
        scan_steps["features"].items, scan_steps["features"].seconds = scan.rows_read, t1 - t0
        scan_steps["read"].items, scan_steps["read"].seconds = scan.rows_read, time.perf_counter() - t1

        owner = new_owner()
        run_id, done = open_run(sessions, options, sha, owner, mode=executor.mode, chunk_size=executor.chunk_size)
        with sessions() as session:  # a resumed run's metrics count only what this attempt adds
            already = members_by_status(session, run_id)
        # Every log line of the run from here on, and every partner call, carries the run's id.
        run_log_id = request_id_var.set(f"run-{run_id}")
        heartbeat = Heartbeat(sessions, run_id, owner, on_lost=stop.set)
        heartbeat.start()
        try:
            context = RunContext(sessions, partner, options, scan, run_id, owner, done, stop, progress_start,
                                 progress)
            failure = ping(partner)
            if failure is None:
                scored = executor.score(context, scan_steps)
                failure = scored.failure
            else:  # nothing scored: the steps as the executors report them, the partner's empty
                steps = {**{name: StepStats(name) for name in STEPS}, **scan_steps}
                scored = Scored({name: s.as_dict() for name, s in steps.items()}, RetryTally())
            if heartbeat.lost:
                failure = Failure(RunFailure.LEASE_LOST, "another process took over this run (its heartbeat had "
                                                         "stopped); its outcome is theirs")
            status = RunStatus.FAILED if failure else (RunStatus.INTERRUPTED if scored.interrupted else None)

            def finish() -> OfferRun:
                with sessions() as session, session.begin():
                    run = session.get(OfferRun, run_id, with_for_update=executor.lock_run_to_finish)
                    if run.lease_owner == owner:  # never overwrite the status of a process that took over
                        finalise_run(session, run, status=status, rows_read=scan.rows_read,
                                     rejected=scan.rejected.as_dict(), step_metrics=scored.step_metrics,
                                     error=failure.message if failure else None, timeline=scored.timeline)
                    return run

            run = through_outage(finish, options.database_outage_s, what="finishing the offers run")
            through_outage(lambda: executor.finished(context, status), options.database_outage_s,
                           what="finishing the offers run")
            count_run(run, scored.step_metrics, already=already)
            if failure:
                log.error("offers run failed", extra={"run_id": run_id, "error": failure.message,
                                                      "failure": failure.kind.value})
            return RunReport(run=run, rows_read=scan.rows_read, steps=scored.steps,
                             elapsed_s=time.perf_counter() - started, interrupted=scored.interrupted,
                             retries=scored.retries, failure=failure)
        finally:
            heartbeat.stop()
            request_id_var.reset(run_log_id)
