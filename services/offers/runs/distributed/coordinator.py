"""The coordinator of a distributed offers run (``flask run-offers --distributed``).

It does what only one process should: read the input and compute features once, write skipped
members, cut the scoreable members into chunks stored in the shared database, enqueue one task
per chunk (the message is only the chunk's address), then follow the chunks' statuses in the
database to feed the progress bar and decide the run's end. Workers (``worker``) score and
record the chunks. The run's record, counts, exports and exit codes are those of a local run.

Ends:
- every chunk done -> ``succeeded`` / ``completed_with_failures`` from the recorded results;
- a chunk used up its attempts -> ``failed`` with that chunk's error; pending chunks revoked;
- ``stop`` (Ctrl-C, TERM) -> ``interrupted``; pending chunks revoked, chunks in flight discarded
  at their commit (the run row is locked by both sides), so ``--resume`` redoes exactly those;
- no chunk started or finished for ``stall_s`` -> ``failed`` (are any workers running?).

While it waits: a chunk whose claim stopped beating for ``silent_s`` (its worker was SIGKILLed or
its machine lost, or its attempt ended without recording anything) is taken back and queued again
at once, so a lost worker costs ``silent_s`` (30 s), not the broker's visibility timeout (an hour by
default, longer than the stall time: the run used to fail while healthy workers sat idle). Its
first message, still unacknowledged in the broker, is refused at claim once the chunk is done.

While it waits: after ``lost_after_s`` without progress, the waiting chunks whose task the broker
no longer holds (neither queued nor delivered and unacknowledged: a Redis restarted without
persistence forgets its queue; measured: the run then sat idle until the stall time) are queued
again. Only this run's tasks are looked for, by task id: a stale message of an earlier run used to
count as "held" and kept the lost chunks waiting. A copy too many is harmless: a chunk is recorded
once.

This module commits on its own (run record, skipped members, each chunk, the final status), like
the local pipeline: what was done must survive the coordinator's death so ``--resume`` continues.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from services.db import through_outage
from services.offers.features.scan import FeatureScan
from services.offers.partners.config import PartnerConfig
from services.offers.runs.distributed.chunks import (
    ChunkProgress,
    chunk_members,
    chunk_progress,
    chunk_stats,
    chunk_stored,
    cut_frames,
    drop_inputs,
    mark_queued,
    pending_task_ids,
    reopen_for_resume,
    restore_inputs,
    store_chunk,
    stored_chunks,
    take_back_silent_claims,
    waiting_chunks,
)
from services.offers.runs.distributed.worker import PARTNER_STEPS, ChunkJob
from services.offers.runs.frame import (
    Failure,
    RunContext,
    RunFailure,
    RunReport,
    Scored,
    run_frame,
)
from services.offers.runs.lease import LEASE_S
from services.offers.runs.lifecycle import RunOptions
from services.offers.runs.recording import MemberOutcome, insert_outcomes
from services.offers.runs.stats import RetryTally, StepStats, Timeline
from services.offers.statuses import MemberStatus
from services.tables import OfferRun

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger("courier.offers.distributed")

POLL_S = 0.25  # how often the chunk table is read: 4 small aggregate queries a second
SILENT_CHECK_S = 1.0  # how often running chunks' claims are checked (one indexed query)
NO_WORKER_NOTE_S = 10.0  # say so when no worker has taken a chunk after this long


class ChunkQueue(Protocol):
    """Where chunk tasks go (Celery in production; a list in unit tests)."""

    def check(self) -> None: ...

    def enqueue(self, job: ChunkJob, task_id: str) -> None:
        """Send the chunk's task under ``task_id`` (chosen and stored by the coordinator first)."""

    def revoke(self, task_ids: list[str]) -> None: ...

    def held(self, task_ids: Collection[str]) -> set[str] | None:
        """Which of ``task_ids`` the broker holds (queued, or delivered and not acknowledged); None
        when it cannot say (unreachable)."""

    def diagnose(self) -> str | None:
        """Why no chunk moves, if the workers can say (none answers; none knows the task)."""


@dataclass(frozen=True)
class DistributedSettings:
    chunk_size: int
    stall_s: float
    # Queue wait p95 was 3.3 s in bench_offers_distributed.py (100k members, 1 worker): 30 s without
    # any progress is far outside normal, yet far below the stall time.
    lost_after_s: float = 30.0
    # A claim silent for six of its worker's beats (every 5 s) is dead, as a run's lease is.
    silent_s: float = LEASE_S


def _scan_frames(scan: FeatureScan, done: set[str], skipped_out: list[MemberOutcome]) -> Iterator[pl.DataFrame]:
    """Every scoreable member in scan order (deterministic, so chunks are cut the same way on resume),
    a partition's frame at a time; skipped members not yet recorded are collected for the coordinator
    to write."""
    for partition in scan.partitions():
        for member_id, reason in sorted(partition.skipped.items()):
            if member_id not in done:
                skipped_out.append(MemberOutcome(member_id=member_id, status=MemberStatus.SKIPPED, error=reason))
        yield partition.features


def _merged_steps(sessions: sessionmaker, run_id: int, scan_steps: dict[str, StepStats],
                  span_s: float) -> tuple[dict[str, Any], RetryTally]:
    steps = {**scan_steps, **{name: StepStats(name) for name in (*PARTNER_STEPS, "record")}}
    retries = RetryTally()
    record_s = 0.0
    with sessions() as session:
        for stats in chunk_stats(session, run_id):
            for name in PARTNER_STEPS:
                step = stats["steps"].get(name, {})
                steps[name].items += step.get("items", 0)
                steps[name].latencies.merge(step.get("hist", {}))
            members = stats.get("members", 0)
            if members:
                steps["record"].add(stats.get("record_s", 0.0) * 1000 / members, members)
            record_s += stats.get("record_s", 0.0)
            for reason, count in stats.get("retries", {}).get("by_reason", {}).items():
                retries.by_reason[reason] = retries.by_reason.get(reason, 0) + count
                retries.total += count
    for name in PARTNER_STEPS:
        steps[name].span(span_s)  # wall time of the scoring phase: items/s is the cluster's throughput
    steps["record"].span(record_s)
    out = {name: s.as_dict() for name, s in steps.items()}
    if retries.total:
        out["retries"] = {"total": retries.total, "by_reason": dict(sorted(retries.by_reason.items()))}
    return out, retries


class DistributedExecutor:
    """Scores on Celery workers: stores chunks, queues one task per chunk, follows them to the end."""

    mode = "distributed"
    lock_run_to_finish = True  # chunk commits hold the run row FOR SHARE: finishing waits for those in flight

    def __init__(self, queue: ChunkQueue, settings: DistributedSettings,
                 note: Callable[[str], None] | None = None) -> None:
        self.queue, self.settings = queue, settings
        self.chunk_size: int | None = settings.chunk_size
        self.note = note or (lambda line: log.info(line))

    def check(self) -> None:
        self.queue.check()  # before any work: DistributedUnavailable names the URL and the setting

    def finished(self, context: RunContext, status: str | None) -> None:
        with context.sessions() as session, session.begin():
            leftover = pending_task_ids(session, context.run_id) if status is not None else []
            drop_inputs(session, context.run_id)
        if leftover:
            self.queue.revoke(leftover)

    def score(self, context: RunContext, scan_steps: dict[str, StepStats]) -> Scored:
        sessions, run_id, scan, done = context.sessions, context.run_id, context.scan, context.done
        with sessions() as session:
            chunk_size = session.get(OfferRun, run_id).chunk_size or self.settings.chunk_size  # a resume keeps its size
        timeline = Timeline(len(done))
        scoring_started = time.perf_counter()
        with sessions() as session, session.begin():
            stale_tasks = pending_task_ids(session, run_id)
            redo = set(reopen_for_resume(session, run_id))
            existing = stored_chunks(session, run_id)
            baseline = chunk_progress(session, run_id).members_done  # done before this attempt (resume)
        if stale_tasks:
            self.queue.revoke(stale_tasks)  # copies a dead coordinator queued: the chunks are queued again below
        with sessions() as session:
            redo_members = chunk_members(session, run_id, redo) if redo else 0
            stored_members = chunk_members(session, run_id)
        to_score = redo_members + max(0, scan.members - stored_members)
        to_skip = max(0, scan.skipped_members - len(done))
        if context.progress_start:
            context.progress_start(to_score + to_skip)
        options = context.options
        job = dict(partner=context.partner.name, concurrency=options.concurrency, use_batch=options.use_batch,
                   max_consecutive_failures=options.max_consecutive_failures)
        queued, cut_short = self._hand_out(context, chunk_size, existing, redo, job, timeline, scoring_started)
        if cut_short:  # stopped before every chunk was stored: the chunks stored are not the whole run
            failure, interrupted = None, True
        else:
            self.note(f"  queued {queued} chunk(s) of up to {chunk_size} members; waiting for workers")
            failure, interrupted = _follow(sessions, run_id, self.settings, context.stop, context.progress,
                                           self.note, timeline, scoring_started, baseline,
                                           _Requeue(sessions, run_id, self.queue, job), options.database_outage_s)
        span_s = time.perf_counter() - scoring_started
        step_metrics, retries = through_outage(lambda: _merged_steps(sessions, run_id, scan_steps, span_s),
                                               options.database_outage_s, what="merging the chunks' statistics")
        return Scored(step_metrics, retries, failure=failure, interrupted=interrupted, timeline=timeline.points())


    def _hand_out(self, context: RunContext, chunk_size: int, existing: dict[int, str], redo: set[int],
                  job: dict[str, Any], timeline: Timeline, scoring_started: float) -> tuple[int, bool]:
        """Store and queue every chunk not stored yet (and those a resume sends again); returns how many,
        and whether a stop cut the hand-out short.

        Skipped members are recorded on a thread of their own (``_SkippedWriter``): a partition's
        3,300 skipped members took 42 ms to write, as long as storing and queueing six chunks.
        """
        sessions, run_id, options = context.sessions, context.run_id, context.options
        skipped: list[MemberOutcome] = []
        skipped_writer = _SkippedWriter(lambda batch: through_outage(
            lambda: _write_skipped(sessions, run_id, batch, context.progress, timeline, scoring_started),
            options.database_outage_s, what="recording skipped members"))
        queued, cut_short = 0, False
        try:
            for chunk_no, members in cut_frames(_scan_frames(context.scan, context.done, skipped), chunk_size):
                skipped_writer.submit(skipped)
                if context.stop.is_set():
                    cut_short = True
                    break
                if chunk_no in existing and chunk_no not in redo:
                    continue

                def store(session: Session, chunk_no: int = chunk_no, members: pl.DataFrame = members) -> None:
                    if chunk_no in existing:  # sent again by a resume: its inputs were dropped at the end
                        restore_inputs(session, run_id, chunk_no, members)
                    # Stored by an attempt whose commit the outage hid from us: not again.
                    elif not chunk_stored(session, run_id, chunk_no):
                        store_chunk(session, run_id, chunk_no, members)

                def store_and_send(chunk_no: int = chunk_no, store: Callable[[Session], None] = store) -> None:
                    _send(sessions, self.queue, run_id, chunk_no, job, first=store)

                through_outage(store_and_send, options.database_outage_s, what="storing and queueing chunks")
                queued += 1
            skipped_writer.submit(skipped)
            skipped_writer.wait()
        finally:
            skipped_writer.close()
        return queued, cut_short


class _SkippedWriter:
    """Records skipped members on one thread beside the hand-out, one batch in flight at most (so
    memory holds two partitions' skipped members, not the run's); a failed write is raised on the
    coordinator's thread at the next ``submit`` or ``wait``."""

    def __init__(self, write: Callable[[list[MemberOutcome]], None]) -> None:
        self.write = write
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="offers-skipped")
        self.pending: Future[None] | None = None

    def submit(self, skipped: list[MemberOutcome]) -> None:
        """Take the members in ``skipped`` (the list is emptied) to be written."""
        if not skipped:
            return
        self.wait()
        batch = skipped[:]
        skipped.clear()
        self.pending = self.pool.submit(contextvars.copy_context().run, self.write, batch)  # log lines keep the run id

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def run_distributed(
    sessions: sessionmaker,
    partner: PartnerConfig,
    options: RunOptions,
    queue: ChunkQueue,
    settings: DistributedSettings,
    *,
    progress_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    note: Callable[[str], None] | None = None,
) -> RunReport:
    """Run ``options`` over the workers behind ``queue``; returns when the run has ended."""
    return run_frame(sessions, partner, options, DistributedExecutor(queue, settings, note),
                     progress_start=progress_start, progress=progress, stop=stop)


def _write_skipped(sessions: sessionmaker, run_id: int, skipped: list[MemberOutcome],
                   progress: Callable[[int], None] | None, timeline: Timeline, scoring_started: float) -> None:
    if not skipped:
        return
    with sessions() as session, session.begin():
        insert_outcomes(session, run_id, skipped)
    timeline.add(time.perf_counter() - scoring_started, len(skipped))
    if progress:
        progress(len(skipped))
    skipped.clear()


def new_task_id() -> str:
    return str(uuid.uuid4())  # Celery's own form


def _send(sessions: sessionmaker, queue: ChunkQueue, run_id: int, chunk_no: int, job: dict[str, Any],
          first: Callable[[Session], None] | None = None) -> None:
    """Queue a chunk's task under a new id, recorded first (what an interruption revokes), in one
    transaction with ``first`` (storing the chunk's inputs). A send that fails after that commit is
    a task the broker never held: the lost-queue check queues it again."""
    task_id = new_task_id()
    with sessions() as session, session.begin():
        if first is not None:
            first(session)
        mark_queued(session, run_id, chunk_no, task_id)
    queue.enqueue(ChunkJob(run_id=run_id, chunk_no=chunk_no, **job), task_id)


class _Requeue:
    """Queue again the waiting chunks a broker no longer holds (see the module docstring)."""

    def __init__(self, sessions: sessionmaker, run_id: int, queue: ChunkQueue, job: dict[str, Any]) -> None:
        self.sessions, self.run_id, self.queue, self.job = sessions, run_id, queue, job
        self.noted_unreachable = False

    def silent_claims(self, silent_s: float, note: Callable[[str], None]) -> bool:
        """Take back the chunks whose claim went silent and queue them again; True if any."""
        with self.sessions() as session, session.begin():
            taken = take_back_silent_claims(session, self.run_id, silent_s)
        for chunk_no, attempt, worker in taken:
            _send(self.sessions, self.queue, self.run_id, chunk_no, self.job)
            note(f"  chunk {chunk_no}: its worker {worker} stopped reporting for {silent_s:g} s (attempt {attempt}): "
                 "queued again")
            log.warning("chunk claim went silent, queued again", extra={"run_id": self.run_id, "chunk": chunk_no,
                                                                        "attempt": attempt, "worker": worker})
        return bool(taken)

    def __call__(self, note: Callable[[str], None]) -> bool:
        """True if chunks were queued again."""
        with self.sessions() as session:
            waiting = waiting_chunks(session, self.run_id)
        if not waiting:
            return False
        held = self.queue.held([task_id for task_id in waiting.values() if task_id])
        if held is None:
            if not self.noted_unreachable:
                self.noted_unreachable = True
                note("  the Celery broker cannot be reached: waiting for it (the run fails after the stall time "
                     "without progress; `--resume` queues what is left)")
            return False
        self.noted_unreachable = False
        lost = [chunk_no for chunk_no, task_id in waiting.items() if task_id not in held]
        for chunk_no in lost:
            _send(self.sessions, self.queue, self.run_id, chunk_no, self.job)
        if lost:
            note(f"  the broker held none of the tasks of {len(lost)} waiting chunk(s) (restarted without "
                 "persistence?): queued them again")
            log.warning("chunk tasks lost by the broker, queued again", extra={"run_id": self.run_id,
                                                                                "chunks": len(lost)})
        return bool(lost)


def _follow(sessions: sessionmaker, run_id: int, settings: DistributedSettings, stop: threading.Event,
            progress: Callable[[int], None] | None, note: Callable[[str], None], timeline: Timeline,
            scoring_started: float, baseline: int, requeue: _Requeue,
            outage_s: float = 0.0) -> tuple[Failure | None, bool]:
    """Poll the chunk table until the run ends; feed progress and the timeline from chunk completions.

    A database that cannot be reached (a PostgreSQL restart) is waited out for ``outage_s`` at each
    step; the workers' chunks meanwhile wait or retry on their side. It used to end the coordinator
    at once, with the run left ``running``."""

    def progress_now() -> ChunkProgress:
        with sessions() as session:
            return chunk_progress(session, run_id)

    reported = 0
    last_state = None
    last_change = last_lost_check = last_silent_check = time.monotonic()
    noted_idle = False
    while True:
        state = through_outage(progress_now, outage_s, what="following the run's chunks")
        newly = state.members_done - baseline - reported
        if newly > 0:
            reported += newly
            timeline.add(time.perf_counter() - scoring_started, newly)
            if progress:
                progress(newly)
        if state.failed and state.first_failure is not None:
            chunk_no, chunk_error = state.first_failure
            return Failure(RunFailure.CHUNK_FAILED, f"chunk {chunk_no} failed: {chunk_error}"), False
        if state.done == state.total:
            return None, False
        if stop.is_set():
            return None, True
        snapshot = (state.done, state.running, state.members_done, state.last_change)
        now = time.monotonic()
        if snapshot != last_state:
            last_state, last_change = snapshot, now
        elif now - last_change > settings.stall_s:
            why = requeue.queue.diagnose()
            return Failure(RunFailure.STALLED,
                           f"no chunk started or finished in {settings.stall_s:g} s ({state.done}/{state.total} "
                           "done); " + (f"{why}; " if why else "")
                           + "are workers running? (`celery -A wsgi:celery_app worker`)"), False
        elif now - max(last_change, last_lost_check) > settings.lost_after_s:
            last_lost_check = now
            if through_outage(lambda: requeue(note), outage_s, what="queueing lost chunks again"):
                last_change = now  # the requeued chunks get a full stall time
        if state.running and now - last_silent_check >= SILENT_CHECK_S:
            last_silent_check = now
            if through_outage(lambda: requeue.silent_claims(settings.silent_s, note), outage_s,
                              what="taking back silent chunk claims"):
                last_change = now
        if not noted_idle and state.last_change is None and now - last_change > NO_WORKER_NOTE_S:
            noted_idle = True
            note("  no worker has taken a chunk yet: start workers with `celery -A wsgi:celery_app worker` "
                 "(same COURIER_* settings as this command)")
        stop.wait(POLL_S)


__all__ = ["ChunkQueue", "DistributedExecutor", "DistributedSettings", "run_distributed"]
