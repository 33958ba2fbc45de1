"""The offers pipeline: features -> (ATS || RESP) -> offer -> record, streamed with bounded concurrency.

No barrier between stages: each member goes through its three calls as soon as a slot is free,
while other members are at other stages.  At most ``concurrency`` members are in flight; each uses
two threads (its own for ATS and the offer, one from a second pool for RESP), so the two pools
can never wait on each other.  Results flow through a queue to one writer thread that inserts them
in batches, so the database sees few, large transactions and memory stays bounded by the queue.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker

from services.errors import CourierError
from services.models import OfferRun
from services.offers.features import FeatureTable, InputError, compute_features, read_header
from services.offers.partners import PartnerClient
from services.offers.recording import (
    MemberOutcome,
    create_run,
    finalise_run,
    insert_outcomes,
    recorded_members,
)

log = logging.getLogger("courier.offers")

BATCH_SIZE = 500
BATCH_SECONDS = 0.5
MAX_REJECTED_SAMPLE = 1000


class ResumeError(Exception):
    """``--resume`` cannot continue that run; the message says why."""


@dataclass
class StepStats:
    """Items, wall-clock span and per-call latencies of one step."""

    name: str
    items: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ms: float) -> None:
        """One item's latency (measured in any thread or process); the wall-clock span is set by ``span``."""
        with self._lock:
            self.items += 1
            self.latencies_ms.append(ms)

    def span(self, seconds: float) -> None:
        self.seconds = seconds

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.items, "seconds": round(self.seconds, 4),
                               "items_per_s": round(self.items / self.seconds, 1) if self.seconds > 0 else None}
        if self.latencies_ms:
            lat = sorted(self.latencies_ms)
            out.update({f"p{q}_ms": round(_percentile(lat, q), 3) for q in (50, 95, 99)})
        return out


def _percentile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1]


@dataclass
class RunOptions:
    input_path: str
    partner: str
    as_of: date
    concurrency: int
    resume_run_id: int | None = None
    processes: int = 1


@dataclass
class RunReport:
    run: OfferRun
    table: FeatureTable
    steps: dict[str, StepStats]
    elapsed_s: float
    interrupted: bool


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return digest.hexdigest()


@dataclass(frozen=True)
class Scores:
    ats_prediction: float
    resp_prediction: float
    offer: str
    ats_ms: float
    resp_ms: float
    offer_ms: float


class PartnerStepError(Exception):
    """A partner call failed; ``step`` says which (ats, resp, offer), ``error`` is our upstream error."""

    def __init__(self, step: str, error: CourierError) -> None:
        super().__init__(f"{step}: {error.code}: {error.message}")
        self.step = step
        self.error = error


def score_features(client: PartnerClient, resp_pool: ThreadPoolExecutor, features: dict[str, Any]) -> Scores:
    """ATS and RESP in parallel (RESP on ``resp_pool``), then the offer. Used by batch and real time."""

    def timed(step: str, fn: Callable, *args):
        started = time.perf_counter()
        try:
            value = fn(*args)
        except CourierError as exc:
            raise PartnerStepError(step, exc) from exc
        return value, (time.perf_counter() - started) * 1000

    resp_future = resp_pool.submit(timed, "resp", client.predict_resp, features)
    try:
        ats, ats_ms = timed("ats", client.predict_ats, features)
    finally:
        resp_outcome = resp_future.exception() or resp_future.result()  # wait for RESP either way
    if isinstance(resp_outcome, BaseException):
        raise resp_outcome
    resp, resp_ms = resp_outcome
    offer, offer_ms = timed("offer", client.assign_offer, ats, resp)
    return Scores(ats, resp, offer, ats_ms, resp_ms, offer_ms)


def score_member(client: PartnerClient, resp_pool: ThreadPoolExecutor, member_id: str,
                 features: dict[str, Any]) -> MemberOutcome:
    """A member's outcome: a partner failure is the member's, recorded with its step, not the run's."""
    outcome = MemberOutcome(member_id=member_id, status="failed", features=features)
    try:
        scores = score_features(client, resp_pool, features)
    except PartnerStepError as exc:
        outcome.error = str(exc)
        return outcome
    outcome.status = "scored"
    outcome.ats_prediction, outcome.resp_prediction, outcome.offer = (
        scores.ats_prediction, scores.resp_prediction, scores.offer)
    outcome.ats_ms, outcome.resp_ms, outcome.offer_ms = scores.ats_ms, scores.resp_ms, scores.offer_ms
    return outcome


def score_members(client: PartnerClient, rows, concurrency: int, emit: Callable[[MemberOutcome], None],
                  stop: threading.Event | Any) -> bool:
    """Score ``rows`` with at most ``concurrency`` members in flight; return True if stopped early.

    Members in flight when ``stop`` is set (or Ctrl-C arrives) finish and are emitted.
    """
    slots = threading.BoundedSemaphore(concurrency)
    interrupted = False

    def work(row: dict[str, Any]) -> None:
        member_id = row.pop("member_id")
        try:
            emit(score_member(client, resp_pool, member_id, row))
        except BaseException as exc:  # noqa: BLE001 - never lose a member silently
            emit(MemberOutcome(member_id=member_id, status="failed", features=row,
                               error=f"internal: {type(exc).__name__}: {exc}"))
        finally:
            slots.release()

    # The member pool is the inner context, so it drains (members in flight finish) before the
    # RESP pool they submit to is shut down.
    with ThreadPoolExecutor(concurrency, thread_name_prefix="offers-resp") as resp_pool, \
            ThreadPoolExecutor(concurrency, thread_name_prefix="offers") as member_pool:
        try:
            for row in rows:
                acquired = False
                while not stop.is_set():
                    if slots.acquire(timeout=0.2):
                        acquired = True
                        break
                if not acquired:
                    interrupted = True
                    break
                member_pool.submit(work, row)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
    return interrupted


def _queue_rows(tasks):
    while True:
        row = tasks.get()
        if row is None:
            return
        yield row


def _process_worker(config, concurrency: int, tasks, results, stop) -> None:
    """One scoring process: its own pooled client and threads; outcomes go back through ``results``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    client = PartnerClient(config, pool_maxsize=concurrency)
    try:
        score_members(client, _queue_rows(tasks), concurrency, results.put, stop)
    finally:
        client.close()
        results.put(None)


def _score_in_processes(config, pending: list[dict[str, Any]], options: RunOptions,
                        emit: Callable[[MemberOutcome], None], stop: threading.Event) -> bool:
    """Spread members over ``options.processes`` processes (requests costs ~0.75 ms of CPU per call:
    one process tops out near 1,300 calls/s, whatever the partner could take).

    Spawned, not forked: polars' thread pool does not survive a fork.  ``concurrency`` is split
    between the processes.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    per_process = max(1, options.concurrency // options.processes)
    tasks = ctx.Queue(maxsize=per_process * options.processes * 4)
    results = ctx.Queue()
    process_stop = ctx.Event()
    workers = [ctx.Process(target=_process_worker, args=(config, per_process, tasks, results, process_stop),
                           name=f"offers-scorer-{i}", daemon=True) for i in range(options.processes)]
    for worker in workers:
        worker.start()
    interrupted = False

    def feed() -> None:
        nonlocal interrupted
        for row in pending:
            while True:
                if stop.is_set():
                    interrupted = True
                    break
                try:
                    tasks.put(row, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if interrupted:
                break
        for _ in workers:
            tasks.put(None)

    feeder = threading.Thread(target=feed, name="offers-feeder", daemon=True)
    feeder.start()
    finished = 0
    try:
        while finished < len(workers):
            if stop.is_set():
                process_stop.set()
            try:
                item = results.get(timeout=0.2)
            except queue.Empty:
                if not any(w.is_alive() for w in workers) and results.empty():
                    break
                continue
            if item is None:
                finished += 1
            else:
                emit(item)
    except KeyboardInterrupt:
        stop.set()
        process_stop.set()
        interrupted = True
        while finished < len(workers):  # members in flight still finish and are kept
            item = results.get()
            if item is None:
                finished += 1
            else:
                emit(item)
    feeder.join(timeout=5)
    for worker in workers:
        worker.join(timeout=10)
    return interrupted or stop.is_set()


class _Writer(threading.Thread):
    """Drains outcomes into the database in batches; reports progress as it goes."""

    def __init__(self, sessions: sessionmaker, run_id: int, step: StepStats,
                 progress: Callable[[int], None] | None) -> None:
        super().__init__(name="offers-writer", daemon=True)
        self.queue: queue.Queue[MemberOutcome | None] = queue.Queue(maxsize=BATCH_SIZE * 8)
        self.sessions = sessions
        self.run_id = run_id
        self.step = step
        self.progress = progress
        self.error: BaseException | None = None
        self.written = 0
        self._first_started: float | None = None

    def _flush(self, batch: list[MemberOutcome]) -> None:
        if not batch:
            return
        started = time.perf_counter()
        with self.sessions() as session, session.begin():
            insert_outcomes(session, self.run_id, batch)
        ended = time.perf_counter()
        per_item_ms = (ended - started) * 1000 / len(batch)
        for _ in batch:  # one latency per member: its share of the batch's write
            self.step.add(per_item_ms)
        if self._first_started is None:
            self._first_started = started
        self.step.span(ended - self._first_started)
        self.written += len(batch)
        if self.progress:
            self.progress(len(batch))

    def run(self) -> None:
        batch: list[MemberOutcome] = []
        deadline = time.monotonic() + BATCH_SECONDS
        try:
            while True:
                try:
                    item = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    item = ...
                if item is None:
                    self._flush(batch)
                    return
                if item is not ...:
                    batch.append(item)
                if len(batch) >= BATCH_SIZE or time.monotonic() >= deadline:
                    self._flush(batch)
                    batch = []
                    deadline = time.monotonic() + BATCH_SECONDS
        except BaseException as exc:  # noqa: BLE001 - surfaced by the pipeline after join()
            self.error = exc
            log.exception("offer results writer failed")


def _rejected_summary(table: FeatureTable) -> dict[str, Any]:
    return {
        "total": len(table.rejected),
        "by_reason": table.rejected_by_reason,
        "rows": [{"line": r.line, "member_id": r.member_id, "reason": r.reason}
                 for r in table.rejected[:MAX_REJECTED_SAMPLE]],
        "rows_truncated": len(table.rejected) > MAX_REJECTED_SAMPLE,
    }


def run_offers(
    sessions: sessionmaker,
    client: PartnerClient,
    options: RunOptions,
    *,
    progress_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> RunReport:
    """Score every member of ``options.input_path`` on ``client``'s partner and record the run.

    Ctrl-C (KeyboardInterrupt) or ``stop`` ends submission; members in flight finish, everything
    finished is stored, and the run is marked ``interrupted`` so ``resume_run_id`` can continue it.
    """
    stop = stop or threading.Event()
    steps = {name: StepStats(name) for name in ("read", "features", "ats", "resp", "offer", "record")}
    started = time.perf_counter()

    read_header(options.input_path)  # fail fast, naming the file, before any work
    t0 = time.perf_counter()
    sha = file_sha256(options.input_path)
    t1 = time.perf_counter()
    table = compute_features(options.input_path, options.as_of)
    t2 = time.perf_counter()
    steps["read"].items, steps["read"].seconds = table.rows_read, t1 - t0
    steps["features"].items, steps["features"].seconds = table.rows_read, t2 - t1

    with sessions() as session, session.begin():
        if options.resume_run_id is not None:
            run = session.get(OfferRun, options.resume_run_id)
            if run is None:
                raise ResumeError(f"run {options.resume_run_id} does not exist")
            if run.status == "succeeded":
                raise ResumeError(f"run {run.id} already succeeded; nothing to resume")
            if run.input_sha256 != sha:
                raise ResumeError(f"run {run.id} read a different input (sha256 {run.input_sha256[:12]}..., "
                                  f"this file {sha[:12]}...)")
            done = recorded_members(session, run.id)
            run.status = "running"
        else:
            run = create_run(session, partner=options.partner, input_path=str(options.input_path),
                             input_sha256=sha, as_of=options.as_of, concurrency=options.concurrency)
            done = set()
        run_id = run.id

    skipped = [MemberOutcome(member_id=m, status="skipped", error=reason)
               for m, reason in sorted(table.skipped.items()) if m not in done]
    pending = [row for row in table.features.iter_rows(named=True) if row["member_id"] not in done]
    if progress_start:
        progress_start(len(skipped) + len(pending))

    writer = _Writer(sessions, run_id, steps["record"], progress)
    writer.start()
    for outcome in skipped:
        writer.queue.put(outcome)

    scoring_started = time.perf_counter()

    def emit(outcome: MemberOutcome) -> None:
        for step in ("ats", "resp", "offer"):
            ms = getattr(outcome, f"{step}_ms")
            if ms is not None:
                steps[step].add(ms)
        writer.queue.put(outcome)

    error: str | None = None
    try:
        if options.processes > 1:
            interrupted = _score_in_processes(client.config, pending, options, emit, stop)
        else:
            interrupted = score_members(client, pending, options.concurrency, emit, stop)
    finally:
        scoring_seconds = time.perf_counter() - scoring_started
        writer.queue.put(None)
        writer.join()
    for step in ("ats", "resp", "offer"):
        steps[step].span(scoring_seconds)
    if writer.error is not None:
        error = f"writing results failed: {writer.error}"

    steps_out = {name: s.as_dict() for name, s in steps.items()}
    status = "failed" if error else ("interrupted" if interrupted else "succeeded")
    with sessions() as session, session.begin():
        run = session.get(OfferRun, run_id)
        finalise_run(session, run, status=status, rows_read=table.rows_read, rejected=_rejected_summary(table),
                     step_metrics=steps_out, error=error)
    return RunReport(run=run, table=table, steps=steps, elapsed_s=time.perf_counter() - started,
                     interrupted=interrupted)


__all__ = ["PartnerStepError", "ResumeError", "RunOptions", "RunReport", "Scores", "file_sha256",
           "run_offers", "score_features", "score_member"]
