"""The offers pipeline: features -> ping -> (ATS || RESP) -> offer -> record, streamed.

Features are computed partition by partition (``FeatureScan``), so memory does not grow with the
file.  Scoring runs on one event loop in the calling thread (``scoring.score_stream``), per member
or in batches when the partner declares batch endpoints; there is no barrier between stages.
Outcomes go in lists to one writer thread that inserts them in large transactions.

This module commits on its own (the run record, then results in batches, then the final status):
a run is long, and what was scored must survive a crash or Ctrl-C so that ``--resume`` can
continue it.  Statuses:

- ``succeeded``: every member was scored or skipped (no member failed);
- ``completed_with_failures``: the run went through, but some members failed (see their errors);
- ``failed``: the run could not go on (partner unreachable, circuit breaker, database write);
- ``interrupted``: stopped on request (Ctrl-C, TERM); resumable, like the two before.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker

from services.errors import CourierError, UpstreamTimeout, UpstreamUnavailable
from services.http_async import RetryEvent
from services.logs import request_id_var
from services.metrics import metrics
from services.offers.features import FeatureScan, InputError, read_header, scan_features
from services.offers.lease import Heartbeat, claim, new_owner
from services.offers.partners import PartnerConfig
from services.offers.recording import (
    MemberOutcome,
    Timeline,
    create_run,
    finalise_run,
    forget_failed,
    insert_outcomes,
    recorded_members,
)
from services.offers.scoring import RetryTally, ScoringSettings, StepStats, ping_partner, score_stream
from services.offers.statuses import MemberStatus, RunStatus
from services.tables import OfferRun

log = logging.getLogger("courier.offers")

BATCH_SIZE = 1000  # results per insert: measured ~40 us per row either way; fewer, larger commits
BATCH_SECONDS = 0.5
DEFAULT_MAX_CONSECUTIVE_FAILURES = 100


class ResumeError(Exception):
    """``--resume`` cannot continue that run; the message says why."""


@dataclass
class RunOptions:
    input_path: str
    partner: str
    as_of: date
    concurrency: int
    resume_run_id: int | None = None
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES
    use_batch: bool = True


@dataclass
class RunReport:
    run: OfferRun
    rows_read: int
    steps: dict[str, StepStats]
    elapsed_s: float
    interrupted: bool
    retries: RetryTally


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return digest.hexdigest()


class _Writer(threading.Thread):
    """Drains lists of outcomes into the database in batches; reports progress as it goes."""

    def __init__(self, sessions: sessionmaker, run_id: int, step: StepStats,
                 progress: Callable[[int], None] | None, on_error: Callable[[], None] | None = None,
                 already_recorded: int = 0) -> None:
        super().__init__(name="offers-writer", daemon=True)
        self.context = contextvars.copy_context()  # log lines of this thread carry the run's id
        self.on_error = on_error
        self.queue: queue.Queue[list[MemberOutcome] | None] = queue.Queue(maxsize=16)
        self.sessions = sessions
        self.run_id = run_id
        self.step = step
        self.progress = progress
        self.error: BaseException | None = None
        self.written = 0
        self._first_started: float | None = None
        self._created = time.perf_counter()
        self.timeline = Timeline(already_recorded)

    def _flush(self, batch: list[MemberOutcome]) -> None:
        if not batch:
            return
        started = time.perf_counter()
        with self.sessions() as session, session.begin():
            insert_outcomes(session, self.run_id, batch)
        ended = time.perf_counter()
        self.step.add((ended - started) * 1000 / len(batch), len(batch))  # each member's share of the write
        if self._first_started is None:
            self._first_started = started
        self.step.span(ended - self._first_started)
        self.written += len(batch)
        self.timeline.add(ended - self._created, len(batch))
        if self.progress:
            self.progress(len(batch))

    def run(self) -> None:
        self.context.run(self._drain)

    def _drain(self) -> None:
        batch: list[MemberOutcome] = []
        deadline = time.monotonic() + BATCH_SECONDS
        finished = False
        try:
            while True:
                try:
                    item = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    item = []
                if item is None:
                    finished = True
                    self._flush(batch)
                    return
                batch.extend(item)
                if len(batch) >= BATCH_SIZE or time.monotonic() >= deadline:
                    self._flush(batch)
                    batch = []
                    deadline = time.monotonic() + BATCH_SECONDS
        except BaseException as exc:  # noqa: BLE001 - surfaced by the pipeline after join()
            self.error = exc
            log.exception("offer results writer failed")
            if self.on_error is not None:
                self.on_error()  # stop taking members: nothing more can be recorded
            while not finished and self.queue.get() is not None:  # producers must never block on us
                pass


class _Emitter:
    """Collects outcomes from the scoring loop into lists for the writer (one queue put per 200)."""

    def __init__(self, writer: _Writer, steps: dict[str, StepStats]) -> None:
        self.writer = writer
        self.steps = steps
        self.pending: list[MemberOutcome] = []

    def __call__(self, outcome: MemberOutcome) -> None:
        steps = self.steps
        if outcome.ats_ms is not None:
            steps["ats"].add(outcome.ats_ms)
        if outcome.resp_ms is not None:
            steps["resp"].add(outcome.resp_ms)
        if outcome.offer_ms is not None:
            steps["offer"].add(outcome.offer_ms)
        self.pending.append(outcome)
        if len(self.pending) >= 200:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.queue.put(self.pending)
            self.pending = []


def _rows(scan: FeatureScan, done: set[str], emit: Callable[[MemberOutcome], None]) -> Iterator[dict[str, Any]]:
    """Each partition's skipped members (emitted as they come) and rows to score, one partition at a time."""
    for partition in scan.partitions():
        for member_id, reason in sorted(partition.skipped.items()):
            if member_id not in done:
                emit(MemberOutcome(member_id=member_id, status=MemberStatus.SKIPPED, error=reason))
        for row in partition.features.iter_rows(named=True):
            if row["member_id"] not in done:
                yield row


def count_run(run: OfferRun, step_metrics: dict[str, Any]) -> None:
    """Prometheus: the run's final status, its members by outcome, each step's items and seconds."""
    m = metrics()
    m.offer_runs.labels(run.status).inc()
    for outcome, count in ((MemberStatus.SCORED, run.members_scored), (MemberStatus.SKIPPED, run.members_skipped),
                           (MemberStatus.FAILED, run.members_failed)):
        m.offer_members.labels(outcome).inc(count)
    for name, step in step_metrics.items():
        if name != "retries":
            m.offer_step_items.labels(name).inc(step["items"])
            m.offer_step_seconds.labels(name).inc(step["seconds"])


def open_run(sessions: sessionmaker, options: RunOptions, sha: str, owner: str, *, mode: str = "local",
             chunk_size: int | None = None) -> tuple[int, set[str]]:
    """Create the run, or take over the one to resume: its failed members are forgotten and retried.

    Resuming takes the run's lease first (one conditional UPDATE), so of two ``--resume`` of one
    run only one goes on, and a run whose process is alive cannot be resumed under it.
    """
    if options.resume_run_id is None:
        with sessions() as session, session.begin():
            run = create_run(session, partner=options.partner, input_path=str(options.input_path),
                             input_sha256=sha, as_of=options.as_of, concurrency=options.concurrency, owner=owner)
            run.mode, run.chunk_size = mode, chunk_size
            return run.id, set()
    with sessions() as session:
        run = session.get(OfferRun, options.resume_run_id)
        if run is None:
            raise ResumeError(f"run {options.resume_run_id} does not exist")
        if run.status == RunStatus.SUCCEEDED:
            raise ResumeError(f"run {run.id} already succeeded; nothing to resume")
        if run.mode != mode:
            flag = "with --distributed" if run.mode == "distributed" else "without --distributed"
            raise ResumeError(f"run {run.id} is a {run.mode} run; resume it {flag}")
        if run.input_sha256 != sha:
            raise ResumeError(f"run {run.id} read a different input (sha256 {run.input_sha256[:12]}..., "
                              f"this file {sha[:12]}...)")
        holder, beat_at = run.lease_owner, run.heartbeat_at
    if not claim(sessions, options.resume_run_id, owner):
        raise ResumeError(f"run {options.resume_run_id} is running in another process ({holder}, last heartbeat "
                          f"{beat_at:%Y-%m-%d %H:%M:%S} UTC); only one process may run it at a time")
    with sessions() as session, session.begin():
        forget_failed(session, options.resume_run_id)
        return options.resume_run_id, recorded_members(session, options.resume_run_id)


def run_offers(
    sessions: sessionmaker,
    partner: PartnerConfig,
    options: RunOptions,
    *,
    progress_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    on_retry: Callable[[RetryTally, RetryEvent], None] | None = None,
) -> RunReport:
    """Score every member of ``options.input_path`` on ``partner`` and record the run.

    ``stop`` (set by the CLI on Ctrl-C or TERM) ends intake; members in flight finish, everything
    finished is stored, and the run is marked ``interrupted`` so ``resume_run_id`` can continue it.
    """
    stop = stop or threading.Event()
    steps = {name: StepStats(name) for name in ("read", "features", "ats", "resp", "offer", "record")}
    retries = RetryTally(listener=on_retry)
    started = time.perf_counter()

    read_header(options.input_path)  # fail fast, naming the file, before any work
    t0 = time.perf_counter()
    # Features first: a file that is not a transaction CSV (e.g. 1 GB of NUL bytes) is refused at its
    # first overlong line instead of after hashing all of it.
    with scan_features(options.input_path, options.as_of) as scan:
        t1 = time.perf_counter()
        sha = file_sha256(options.input_path)
        t2 = time.perf_counter()
        steps["read"].items, steps["read"].seconds = scan.rows_read, t2 - t1
        steps["features"].items, steps["features"].seconds = scan.rows_read, t1 - t0

        owner = new_owner()
        run_id, done = open_run(sessions, options, sha, owner)
        # Every log line of the run from here on, and every partner call, carries the run's id.
        run_log_id = request_id_var.set(f"run-{run_id}")
        heartbeat = Heartbeat(sessions, run_id, owner, on_lost=stop.set)
        heartbeat.start()
        try:
            error: str | None = None
            interrupted = False
            writer = None
            try:
                ping_partner(partner)
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                error = f"partner {partner.name} did not answer its ping ({partner.display_url}{partner.ping_path}): " \
                        f"{exc.message}; nothing was scored"
            except CourierError as exc:
                # Any other answer (a 404 or 405 from a partner without a ping route, a body that is not
                # JSON) still proves the partner is up: score, and say so in the log.
                log.warning("partner ping answered oddly; scoring anyway",
                            extra={"partner": partner.name, "error": exc.message})
            if error is None:
                if progress_start:
                    progress_start(max(0, scan.members + scan.skipped_members - len(done)))
                writer = _Writer(sessions, run_id, steps["record"], progress, on_error=stop.set,
                                 already_recorded=len(done))
                writer.start()
                emitter = _Emitter(writer, steps)
                scoring_started = time.perf_counter()
                settings = ScoringSettings(concurrency=options.concurrency,
                                           max_consecutive_failures=options.max_consecutive_failures,
                                           use_batch=options.use_batch)
                try:
                    result = score_stream(partner, _rows(scan, done, emitter), settings, emitter, stop,
                                          on_retry=retries)
                finally:
                    scoring_seconds = time.perf_counter() - scoring_started
                    emitter.flush()
                    writer.queue.put(None)
                    writer.join()
                for step in ("ats", "resp", "offer"):
                    steps[step].span(scoring_seconds)
                interrupted = result.interrupted
                if result.tripped:
                    error = (f"stopped after {options.max_consecutive_failures} consecutive member failures "
                             f"(circuit breaker); last error: {result.last_error}")
                if writer.error is not None:
                    error = f"writing results failed: {writer.error}"

            steps_out = {name: s.as_dict() for name, s in steps.items()}
            if retries.total:
                steps_out["retries"] = {"total": retries.total, "by_reason": dict(sorted(retries.by_reason.items()))}
            if heartbeat.lost:
                error = "another process took over this run (its heartbeat had stopped); its outcome is theirs"
            with sessions() as session, session.begin():
                run = session.get(OfferRun, run_id)
                if run.lease_owner == owner:  # never overwrite the status of a process that took over
                    status = RunStatus.FAILED if error else (RunStatus.INTERRUPTED if interrupted else None)
                    finalise_run(session, run, status=status,
                                 rows_read=scan.rows_read, rejected=scan.rejected.as_dict(), step_metrics=steps_out,
                                 error=error, timeline=writer.timeline.points() if writer else None)
            count_run(run, steps_out)
            if error:
                log.error("offers run failed", extra={"run_id": run_id, "error": error})
            return RunReport(run=run, rows_read=scan.rows_read, steps=steps, elapsed_s=time.perf_counter() - started,
                             interrupted=interrupted, retries=retries)

        finally:
            heartbeat.stop()
            request_id_var.reset(run_log_id)


__all__ = ["DEFAULT_MAX_CONSECUTIVE_FAILURES", "ResumeError", "RunOptions", "RunReport", "count_run", "file_sha256",
           "open_run",
           "run_offers"]
