"""The offers pipeline: features -> ping -> (ATS || RESP) -> offer -> record, streamed.

Features are computed partition by partition (``FeatureScan``), so memory does not grow with the
file.  Scoring runs on one event loop in the calling thread (``scoring.score_stream``), per member
or in batches when the partner declares batch endpoints; there is no barrier between stages.
Outcomes go in lists to one writer thread (``result_writer``) that inserts them in large
transactions; opening and resuming a run is ``run_lifecycle``'s.

This module commits on its own (the run record, then results in batches, then the final status):
a run is long, and what was scored must survive a crash or Ctrl-C so that ``--resume`` can
continue it.  Statuses:

- ``succeeded``: every member was scored or skipped (no member failed);
- ``completed_with_failures``: the run went through, but some members failed (see their errors);
- ``failed``: the run could not go on (partner unreachable, circuit breaker, database write);
- ``interrupted``: stopped on request (Ctrl-C, TERM); resumable, like the two before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import sessionmaker

from services.errors import CourierError, UpstreamTimeout, UpstreamUnavailable
from services.http_async import RetryEvent
from services.logs import request_id_var
from services.offers.features import FeatureScan, read_header, scan_features
from services.offers.lease import Heartbeat, new_owner
from services.offers.partners import PartnerConfig
from services.offers.recording import MemberOutcome, finalise_run
from services.offers.result_writer import OutcomeEmitter, ResultWriter
from services.offers.run_lifecycle import RunOptions, count_run, file_sha256, open_run
from services.offers.scoring import ScoringSettings, ping_partner, score_stream
from services.offers.statuses import MemberStatus, RunStatus
from services.offers.step_stats import RetryTally, StepStats
from services.tables import OfferRun

log = logging.getLogger("courier.offers")



@dataclass
class RunReport:
    run: OfferRun
    rows_read: int
    steps: dict[str, StepStats]
    elapsed_s: float
    interrupted: bool
    retries: RetryTally


def _rows(scan: FeatureScan, done: set[str], emit: Callable[[MemberOutcome], None]) -> Iterator[dict[str, Any]]:
    """Each partition's skipped members (emitted as they come) and rows to score, one partition at a time."""
    for partition in scan.partitions():
        for member_id, reason in sorted(partition.skipped.items()):
            if member_id not in done:
                emit(MemberOutcome(member_id=member_id, status=MemberStatus.SKIPPED, error=reason))
        for row in partition.features.iter_rows(named=True):
            if row["member_id"] not in done:
                yield row


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
                writer = ResultWriter(sessions, run_id, steps["record"], progress, on_error=stop.set,
                                 already_recorded=len(done))
                writer.start()
                emitter = OutcomeEmitter(writer, steps)
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


__all__ = ["RunReport", "run_offers"]
