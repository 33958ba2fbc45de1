"""The offers pipeline: features -> ping -> (ATS || RESP) -> offer -> record, streamed.

Features are computed partition by partition (``FeatureScan``), so memory does not grow with the
file.  Scoring runs on one event loop in the calling thread (``scoring.score_stream``), per member
or in batches when the partner declares batch endpoints; there is no barrier between stages.
Outcomes go in lists to one writer thread (``writer``) that inserts them in large
transactions. This is the local executor of the run frame (``frame``: opening or resuming the
run, the partner's ping, the final status); ``distributed.coordinator`` is the other.

This module commits on its own (the run record, then results in batches, then the final status):
a run is long, and what was scored must survive a crash or Ctrl-C so that ``--resume`` can
continue it.  Statuses:

- ``succeeded``: every member was scored or skipped (no member failed);
- ``completed_with_failures``: the run went through, but some members failed (see their errors);
- ``failed``: the run could not go on (partner unreachable, circuit breaker, database write);
- ``interrupted``: stopped on request (Ctrl-C, TERM); resumable, like the two before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy.orm import sessionmaker

from services.http.aio import RetryEvent
from services.offers.features.scan import FeatureScan
from services.offers.partners.config import PartnerConfig
from services.offers.runs.frame import Failure, RunContext, RunFailure, RunReport, Scored, run_frame
from services.offers.runs.lifecycle import RunOptions
from services.offers.runs.recording import MemberOutcome, RecordedResults
from services.offers.runs.scoring import ScoringSettings, score_stream
from services.offers.runs.stats import RetryTally, StepStats
from services.offers.runs.writer import OutcomeEmitter, ResultWriter
from services.offers.statuses import MemberStatus


def _rows(scan: FeatureScan, done: set[str], emit: Callable[[MemberOutcome], None]) -> Iterator[dict[str, Any]]:
    """Each partition's skipped members (emitted as they come) and rows to score, one partition at a time."""
    for partition in scan.partitions():
        for member_id, reason in sorted(partition.skipped.items()):
            if member_id not in done:
                emit(MemberOutcome(member_id=member_id, status=MemberStatus.SKIPPED, error=reason))
        for row in partition.features.iter_rows(named=True):
            if row["member_id"] not in done:
                yield row


class LocalExecutor:
    """Scores in this process: one event loop streams members to the partner, one writer thread
    records outcomes in large transactions."""

    mode = "local"
    chunk_size: int | None = None
    lock_run_to_finish = False

    def __init__(self, on_retry: Callable[[RetryTally, RetryEvent], None] | None = None,
                 recorded: RecordedResults | None = None) -> None:
        self.on_retry = on_retry
        self.recorded = recorded

    def check(self) -> None:
        pass

    def finished(self, context: RunContext, status: str | None) -> None:
        pass

    def score(self, context: RunContext, scan_steps: dict[str, StepStats]) -> Scored:
        steps = {**scan_steps, **{name: StepStats(name) for name in ("ats", "resp", "offer", "record")}}
        retries = RetryTally(listener=self.on_retry)
        options, scan, done = context.options, context.scan, context.done
        if context.progress_start:
            context.progress_start(max(0, scan.members + scan.skipped_members - len(done)))
        writer = ResultWriter(context.sessions, context.run_id, steps["record"], context.progress,
                              on_error=context.stop.set, already_recorded=len(done),
                              outage_s=options.database_outage_s, recorded=self.recorded)
        writer.start()
        emitter = OutcomeEmitter(writer, steps)
        scoring_started = time.perf_counter()
        settings = ScoringSettings(concurrency=options.concurrency,
                                   max_consecutive_failures=options.max_consecutive_failures,
                                   use_batch=options.use_batch)
        try:
            result = score_stream(context.partner, _rows(scan, done, emitter), settings, emitter, context.stop,
                                  on_retry=retries)
        finally:
            scoring_seconds = time.perf_counter() - scoring_started
            emitter.flush()
            writer.queue.put(None)
            writer.join()
        for step in ("ats", "resp", "offer"):
            steps[step].span(scoring_seconds)
        failure = None
        if result.tripped:
            failure = Failure(RunFailure.CIRCUIT_BREAKER,
                              f"stopped after {options.max_consecutive_failures} consecutive member failures "
                              f"(circuit breaker); last error: {result.last_error}")
        if writer.error is not None:
            failure = Failure(RunFailure.WRITE_FAILED, f"writing results failed: {writer.error}")
        step_metrics: dict[str, Any] = {name: s.as_dict() for name, s in steps.items()}
        if retries.total:
            step_metrics["retries"] = {"total": retries.total, "by_reason": dict(sorted(retries.by_reason.items()))}
        return Scored(step_metrics, retries, failure=failure, interrupted=result.interrupted,
                      timeline=writer.timeline.points(), steps=steps)


def run_offers(
    sessions: sessionmaker,
    partner: PartnerConfig,
    options: RunOptions,
    *,
    progress_start: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    on_retry: Callable[[RetryTally, RetryEvent], None] | None = None,
    recorded: RecordedResults | None = None,
) -> RunReport:
    """Score every member of ``options.input_path`` on ``partner`` in this process and record the run.

    ``stop`` (set by the CLI on Ctrl-C or TERM) ends intake; members in flight finish, everything
    finished is stored, and the run is marked ``interrupted`` so ``resume_run_id`` can continue it.
    ``recorded`` keeps the committed results for ``write_output`` (``--output``).
    """
    return run_frame(sessions, partner, options, LocalExecutor(on_retry, recorded), progress_start=progress_start,
                     progress=progress, stop=stop)


__all__ = ["LocalExecutor", "RunReport", "run_offers"]
