"""An offers run's life: its options, opening it (new, or resumed after checks and under its lease),
its input's fingerprint, and what it adds to the metrics when it ends.

Resuming is validated here, in one place, for local and distributed runs alike: the run exists,
did not succeed, read the same input (sha256), ran in the same mode, and nobody else holds it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker

from services.metrics import metrics
from services.offers.features.input import InputError
from services.offers.runs.lease import claim
from services.offers.runs.recording import create_run, forget_failed, recorded_members
from services.offers.statuses import MemberStatus, RunStatus
from services.tables import OfferRun

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
    database_outage_s: float = 60.0  # how long the run waits out an unreachable database before it stops


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return digest.hexdigest()


def count_run(run: OfferRun, step_metrics: dict[str, Any], already: dict[str, int] | None = None) -> None:
    """Prometheus: the run's final status, its members by outcome, each step's items and seconds.

    ``already``: members recorded by status when this attempt began (a resumed run's earlier
    attempts, counted when they ended): only what this attempt added is counted, so a run resumed
    three times is not counted four times over."""
    already = already or {}
    m = metrics()
    m.offer_runs.labels(run.status).inc()
    for outcome, count in ((MemberStatus.SCORED, run.members_scored), (MemberStatus.SKIPPED, run.members_skipped),
                           (MemberStatus.FAILED, run.members_failed)):
        m.offer_members.labels(outcome).inc(max(0, count - already.get(outcome, 0)))
    for name, step in step_metrics.items():
        if name != "retries":
            m.offer_step_items.labels(name).inc(step["items"])
            m.offer_step_seconds.labels(name).inc(step["seconds"])


def resumed_partner_and_date(sessions: sessionmaker, run_id: int, partner: str | None,
                             as_of: date | None) -> tuple[str, date]:
    """The partner and as-of date a resume of ``run_id`` uses: the run's own. ``ResumeError`` when
    the run does not exist or ones given differ from the run's (a resume scores the same way)."""
    with sessions() as session:
        run = session.get(OfferRun, run_id)
    if run is None:
        raise ResumeError("no such run")
    if partner and partner != run.partner:
        raise ResumeError(f"the run used partner {run.partner!r}, not {partner!r}")
    if as_of and as_of != run.as_of:
        raise ResumeError(f"the run used --as-of {run.as_of}, not {as_of}")
    return run.partner, run.as_of


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
