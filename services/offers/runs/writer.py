"""The result writer of a local offers run: outcomes from the scoring loop to the database in batches.

The scoring loop hands lists of outcomes to one writer thread (``OutcomeEmitter`` -> ``ResultWriter``)
so that inserts never stall scoring. The writer commits on its own, one transaction per batch:
what was scored must survive a crash or Ctrl-C so that ``--resume`` can continue the run.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import sessionmaker

from services.db import through_outage
from services.offers.runs.recording import MemberOutcome, RecordedResults, insert_outcomes
from services.offers.runs.stats import StepLatencies, StepStats, Timeline

log = logging.getLogger("courier.offers")

BATCH_SIZE = 1000  # results per insert: measured ~40 us per row either way; fewer, larger commits
BATCH_SECONDS = 0.5


class ResultWriter(threading.Thread):
    """Drains lists of outcomes into the database in batches; reports progress as it goes."""

    def __init__(self, sessions: sessionmaker, run_id: int, step: StepStats,
                 progress: Callable[[int], None] | None, on_error: Callable[[], None] | None = None,
                 already_recorded: int = 0, outage_s: float = 0.0, recorded: RecordedResults | None = None) -> None:
        super().__init__(name="offers-writer", daemon=True)
        self.recorded = recorded  # committed results kept for --output (see RecordedResults)
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
        self.outage_s = outage_s

    def _flush(self, batch: list[MemberOutcome]) -> None:
        if not batch:
            return
        started = time.perf_counter()

        def insert() -> list[tuple]:
            with self.sessions() as session, session.begin():
                return insert_outcomes(session, self.run_id, batch)

        # A database restart mid-run is waited out (scoring goes on into the bounded queue meanwhile).
        inserted = through_outage(insert, self.outage_s, what="writing offer results")
        if self.recorded is not None:
            self.recorded.keep(inserted)
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


class OutcomeEmitter:
    """Collects outcomes from the scoring loop into lists for the writer (one queue put per 200), and
    their step latencies into the run's step statistics (``StepLatencies``)."""

    def __init__(self, writer: ResultWriter, steps: dict[str, StepStats]) -> None:
        self.writer = writer
        self.latencies = StepLatencies(steps)
        self.pending: list[MemberOutcome] = []

    def __call__(self, outcome: MemberOutcome) -> None:
        latencies = self.latencies
        latencies.add("ats", outcome.ats_ms)
        latencies.add("resp", outcome.resp_ms)
        latencies.add("offer", outcome.offer_ms)
        self.pending.append(outcome)
        if len(self.pending) >= 200:
            self.flush()

    def flush(self) -> None:
        self.latencies.flush()
        if self.pending:
            self.writer.queue.put(self.pending)
            self.pending = []
