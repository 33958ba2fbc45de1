"""One chunk task of a distributed offers run, as a Celery worker executes it (no Celery here).

claim (one short transaction) -> score with the same code as a local run (``scoring.score_stream``)
-> commit the chunk's results in one transaction (``chunks.commit_chunk``). This module commits
on its own, one transaction per step: the task is the unit of work and its results must be durable
before the broker is told (``acks_late``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import sessionmaker

from services.offers.partners.config import PartnerConfig
from services.offers.runs.distributed.chunks import (
    ClaimedChunk,
    ClaimRefused,
    Commit,
    beat_claim,
    claim_chunk,
    commit_chunk,
    record_attempt_error,
)
from services.offers.runs.lease import HEARTBEAT_S, Beats
from services.offers.runs.recording import MemberOutcome
from services.offers.runs.scoring import ScoringSettings, score_stream
from services.offers.runs.stats import RetryTally, StepLatencies, StepStats
from services.offers.statuses import MemberStatus

log = logging.getLogger("courier.offers.chunks")

PARTNER_STEPS = ("ats", "resp", "offer")


@dataclass(frozen=True)
class ChunkJob:
    """What a task message carries: the chunk's address and how to score it (features are in the database)."""

    run_id: int
    chunk_no: int
    partner: str
    concurrency: int
    use_batch: bool
    max_consecutive_failures: int

    def as_message(self) -> dict[str, Any]:
        return asdict(self)


class ChunkAttemptFailed(Exception):
    """This attempt could not score the chunk as a whole (circuit breaker tripped, partner gone)."""


@dataclass(frozen=True)
class ChunkOutcome:
    run_id: int
    chunk_no: int
    result: str  # "done", "duplicate" (a copy committed first), "run stopped", "taken back", or a ClaimRefused reason
    members: int = 0
    failed: int = 0


def _stats(outcomes: list[MemberOutcome], steps: dict[str, StepStats], score_s: float, retries: RetryTally,
           started: float) -> dict[str, Any]:
    """What the coordinator merges into the run's step metrics: mergeable histograms, not percentiles."""
    return {
        "members": len(outcomes),
        "failed": sum(1 for o in outcomes if o.status == MemberStatus.FAILED),
        "score_s": round(score_s, 4),  # record_s is added by commit_chunk
        "started": started, "finished": time.time(),
        "steps": {name: {"items": s.items, "hist": {str(b): c for b, c in s.latencies.counts.items()}}
                  for name, s in steps.items()},
        "retries": {"total": retries.total, "by_reason": retries.by_reason},
    }


def _score(partner: PartnerConfig, job: ChunkJob, claimed: ClaimedChunk,
           taken_back: threading.Event) -> tuple[list[MemberOutcome], dict[str, StepStats], float, RetryTally]:
    outcomes: list[MemberOutcome] = []
    steps = {name: StepStats(name) for name in PARTNER_STEPS}
    latencies = StepLatencies(steps)

    def emit(outcome: MemberOutcome) -> None:
        latencies.add("ats", outcome.ats_ms)
        latencies.add("resp", outcome.resp_ms)
        latencies.add("offer", outcome.offer_ms)
        outcomes.append(outcome)

    retries = RetryTally()
    settings = ScoringSettings(concurrency=job.concurrency, max_consecutive_failures=job.max_consecutive_failures,
                               use_batch=job.use_batch)
    started = time.perf_counter()
    result = score_stream(partner, iter(claimed.rows), settings, emit, taken_back, on_retry=retries)
    latencies.flush()
    if result.tripped:
        raise ChunkAttemptFailed(f"stopped after {job.max_consecutive_failures} consecutive member failures "
                                 f"(circuit breaker); last error: {result.last_error}")
    return outcomes, steps, time.perf_counter() - started, retries


def _claim_beats(sessions: sessionmaker, claimed: ClaimedChunk, on_lost: threading.Event,
                 interval_s: float) -> Beats:
    def beat() -> bool:
        with sessions() as session, session.begin():
            return beat_claim(session, claimed.run_id, claimed.chunk_no, claimed.attempt)

    return Beats(f"offers-chunk-{claimed.run_id}-{claimed.chunk_no}", beat, on_lost.set, interval_s,
                 "chunk claim", {"run_id": claimed.run_id, "chunk": claimed.chunk_no, "attempt": claimed.attempt})


def score_chunk(sessions: sessionmaker, partner: PartnerConfig, job: ChunkJob, *, worker: str,
                max_attempts: int, beat_s: float = HEARTBEAT_S) -> ChunkOutcome:
    """Score and record one chunk. Raises ``ChunkAttemptFailed`` (after recording the error on the
    chunk) when the attempt failed and another attempt is allowed; a last failed attempt marks the
    chunk ``failed`` and returns.

    The claim is beaten every ``beat_s`` from claim to commit; whatever ends the attempt ends the
    beats, so a chunk never stays ``running`` unattended (the coordinator takes a silent claim
    back). If the coordinator took this claim back meanwhile, scoring stops and nothing is written."""
    with sessions() as session, session.begin():
        claimed = claim_chunk(session, job.run_id, job.chunk_no, worker, max_attempts)
    if isinstance(claimed, ClaimRefused):
        log.info("chunk skipped", extra={"run_id": job.run_id, "chunk": job.chunk_no, "reason": claimed.value})
        return ChunkOutcome(job.run_id, job.chunk_no, claimed.value)
    taken_back = threading.Event()
    beats = _claim_beats(sessions, claimed, taken_back, beat_s)
    beats.start()
    try:
        return _attempt(sessions, partner, job, claimed, taken_back, max_attempts)
    finally:
        beats.stop()


def _attempt(sessions: sessionmaker, partner: PartnerConfig, job: ChunkJob, claimed: ClaimedChunk,
             taken_back: threading.Event, max_attempts: int) -> ChunkOutcome:
    wall_started = time.time()
    try:
        outcomes, steps, score_s, retries = _score(partner, job, claimed, taken_back)
        if taken_back.is_set():  # another attempt has it: what this one scored is not complete
            log.info("chunk taken back while scoring; nothing written",
                     extra={"run_id": job.run_id, "chunk": job.chunk_no, "attempt": claimed.attempt})
            return ChunkOutcome(job.run_id, job.chunk_no, "taken back")
        with sessions() as session, session.begin():
            stats = _stats(outcomes, steps, score_s, retries, wall_started)
            committed = commit_chunk(session, job.run_id, job.chunk_no, outcomes, stats)
    except Exception as exc:  # noqa: BLE001 - any failure of this attempt is recorded on the chunk first
        error = str(exc) if isinstance(exc, ChunkAttemptFailed) else f"{type(exc).__name__}: {exc}"
        with sessions() as session, session.begin():
            retry = record_attempt_error(session, job.run_id, job.chunk_no, error, max_attempts)
        log.warning("chunk attempt failed", extra={"run_id": job.run_id, "chunk": job.chunk_no,
                                                   "attempt": claimed.attempt, "retry": retry, "error": error})
        if retry:
            raise ChunkAttemptFailed(error) from exc
        return ChunkOutcome(job.run_id, job.chunk_no, "failed", len(claimed.rows))
    if committed is not Commit.COMMITTED:
        log.info("chunk result discarded", extra={"run_id": job.run_id, "chunk": job.chunk_no,
                                                  "reason": committed.value})
        return ChunkOutcome(job.run_id, job.chunk_no, "duplicate" if committed is Commit.DUPLICATE else "run stopped")
    failed = stats["failed"]
    log.info("chunk done", extra={"run_id": job.run_id, "chunk": job.chunk_no, "members": len(outcomes),
                                  "failed": failed, "score_s": round(score_s, 3)})
    return ChunkOutcome(job.run_id, job.chunk_no, "done", len(outcomes), failed)

