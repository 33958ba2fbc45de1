"""Chunks of a distributed offers run: how members are cut into chunks, and every write to a chunk.

Writes are idempotent so that a chunk delivered twice (its worker was killed after scoring, the
broker redelivered it; or a resume re-enqueued it while an old copy still ran) is recorded once:

- a chunk is cut deterministically (scan order, ``chunk_size`` members each), so the coordinator of a
  resumed run rebuilds exactly the chunks it stored before and only adds the missing ones;
- a worker ``claim``s a chunk before scoring (counting the attempt, refusing a chunk that is done,
  whose run is no longer running, or that used up its attempts), then beats on its claim while it
  scores (``beat_claim``); a claim whose beats stopped (the worker was killed, or its attempt ended
  without recording anything) is taken back by the coordinator (``take_back_silent_claims``) and
  the chunk queued again, without waiting for the broker's visibility timeout;
- ``commit_chunk`` records a chunk's results in one transaction that first locks the run row and
  then moves the chunk to ``done`` only if it is not done yet: of two copies exactly one commits,
  and none commits after the run was interrupted or failed. It replaces the chunk's members' results,
  so a chunk scored again (resume of a chunk with failed members) never duplicates a member.

These functions take a session and never commit: the worker task and the coordinator own the
transactions (each is one short transaction per chunk step).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.orm import Session

from services.offers.runs.recording import MemberOutcome, insert_outcomes
from services.offers.statuses import RunStatus
from services.tables import OfferResult, OfferRun, OfferRunChunk, utcnow

if TYPE_CHECKING:
    import polars as pl


class ChunkStatus(StrEnum):
    PENDING = "pending"  # stored and queued (or to be queued); also after a failed attempt with attempts left
    RUNNING = "running"  # a worker claimed it
    DONE = "done"  # its results are committed
    FAILED = "failed"  # it used up its attempts: the run fails with its error


class Commit(StrEnum):
    """What ``commit_chunk`` did."""

    COMMITTED = "committed"
    DUPLICATE = "a copy of the chunk committed first"
    RUN_STOPPED = "the run stopped (interrupted or failed) while the chunk was scored"


class ClaimRefused(StrEnum):
    DONE = "chunk already done"
    RUN_NOT_RUNNING = "run no longer running"
    NO_ATTEMPTS_LEFT = "no attempts left"
    MISSING = "no such chunk"
    # A stale copy claimed after a resume reopened the run but before it restored the chunk's inputs:
    # scoring it would record the chunk done with no members. The resume sends its own copy.
    NO_INPUTS = "chunk inputs not restored yet"


@dataclass(frozen=True)
class ClaimedChunk:
    run_id: int
    chunk_no: int
    attempt: int
    rows: list[dict[str, Any]]


def cut_frames(frames: Iterable[pl.DataFrame], chunk_size: int) -> Iterator[tuple[int, pl.DataFrame]]:
    """``(chunk_no, members)`` of ``chunk_size`` members each, in the order given (the scan's:
    deterministic, so a resume cuts the same chunks). A chunk may span two of the scan's partitions."""

    held: list[pl.DataFrame] = []
    count = number = 0
    for frame in frames:
        offset = 0
        while offset < frame.height:
            take = min(chunk_size - count, frame.height - offset)
            held.append(frame.slice(offset, take))
            count, offset = count + take, offset + take
            if count == chunk_size:
                yield number, _joined(held)
                held, count, number = [], 0, number + 1
    if count:
        yield number, _joined(held)


def _joined(frames: list[pl.DataFrame]) -> pl.DataFrame:
    import polars as pl

    # Relaxed: a feature that is null throughout one partition has the Null type there.
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")


def encode_inputs(members: pl.DataFrame) -> bytes:
    """A chunk's members as Arrow IPC (uncompressed: doubles barely compress, and lz4 cost as much as
    the encoding itself). A chunk of 5,000 members is handed out in ~3 ms where the JSON rows it
    replaces took ~70 ms to build, encode and store (bench/bench_chunk_io.py, PostgreSQL); dtypes and
    nulls survive as they are."""
    buffer = io.BytesIO()
    members.write_ipc(buffer, compression="uncompressed")
    return buffer.getvalue()


def decode_inputs(inputs: bytes) -> list[dict[str, Any]]:
    """The rows ``encode_inputs`` stored, as the scoring loop takes them."""
    import polars as pl

    return pl.read_ipc(io.BytesIO(inputs)).to_dicts()


def stored_chunks(session: Session, run_id: int) -> dict[int, str]:
    """chunk_no -> status of every chunk stored for the run."""
    return dict(session.execute(select(OfferRunChunk.chunk_no, OfferRunChunk.status)
                                .where(OfferRunChunk.run_id == run_id)).all())


def chunk_stored(session: Session, run_id: int, chunk_no: int) -> bool:
    return session.scalar(select(OfferRunChunk.chunk_no).where(OfferRunChunk.run_id == run_id,
                                                               OfferRunChunk.chunk_no == chunk_no)) is not None


def store_chunk(session: Session, run_id: int, chunk_no: int, members: pl.DataFrame) -> None:
    session.add(OfferRunChunk(run_id=run_id, chunk_no=chunk_no, status=ChunkStatus.PENDING.value,
                              members=members.height, inputs=encode_inputs(members), attempts=0))
    session.flush()


def restore_inputs(session: Session, run_id: int, chunk_no: int, members: pl.DataFrame) -> None:
    """Put a chunk's members back before it is scored again (a resume): the inputs of a chunk are
    dropped once it is done or its run ends (``drop_inputs``), and the same input cuts the same chunk."""
    session.execute(update(OfferRunChunk).where(OfferRunChunk.run_id == run_id, OfferRunChunk.chunk_no == chunk_no)
                    .values(inputs=encode_inputs(members)))


def drop_inputs(session: Session, run_id: int) -> None:
    """Chunk inputs are needed only until their chunk is done: an ended run keeps none (they were
    never deleted before: ~50 MB of JSON after ~30 runs of 100k members). A resume restores the
    inputs of the chunks it sends again from the input file, which it reads anyway (same sha256)."""
    session.execute(update(OfferRunChunk).where(OfferRunChunk.run_id == run_id).values(inputs=None))


def mark_queued(session: Session, run_id: int, chunk_no: int, task_id: str) -> None:
    session.execute(update(OfferRunChunk).where(OfferRunChunk.run_id == run_id, OfferRunChunk.chunk_no == chunk_no)
                    .values(task_id=task_id, queued_at=utcnow()))


def reopen_for_resume(session: Session, run_id: int) -> list[int]:
    """Chunks a resume must run again: not done, or done with failed members. Attempts start over.

    Returns their numbers. Done chunks without failures stay as they are: they are not sent again.
    """
    with_failures = select(OfferRunChunk.chunk_no).where(
        OfferRunChunk.run_id == run_id, OfferRunChunk.status == ChunkStatus.DONE,
        OfferRunChunk.stats["failed"].as_integer() > 0)
    redo = set(session.scalars(with_failures))
    redo |= set(session.scalars(select(OfferRunChunk.chunk_no).where(
        OfferRunChunk.run_id == run_id, OfferRunChunk.status != ChunkStatus.DONE)))
    if redo:
        session.execute(update(OfferRunChunk).where(OfferRunChunk.run_id == run_id,
                                                    OfferRunChunk.chunk_no.in_(sorted(redo)))
                        .values(status=ChunkStatus.PENDING.value, attempts=0, error=None))
    return sorted(redo)


def claim_chunk(session: Session, run_id: int, chunk_no: int, worker: str,
                max_attempts: int) -> ClaimedChunk | ClaimRefused:
    """Take the chunk for one attempt (row locked on PostgreSQL, so two copies see each other)."""
    chunk = session.scalars(select(OfferRunChunk).where(OfferRunChunk.run_id == run_id,
                                                        OfferRunChunk.chunk_no == chunk_no)
                            .with_for_update()).one_or_none()
    if chunk is None:
        return ClaimRefused.MISSING
    if chunk.status == ChunkStatus.DONE:
        return ClaimRefused.DONE
    run_status = session.scalar(select(OfferRun.status).where(OfferRun.id == run_id))
    if run_status != RunStatus.RUNNING:
        return ClaimRefused.RUN_NOT_RUNNING
    if chunk.status == ChunkStatus.FAILED:
        return ClaimRefused.NO_ATTEMPTS_LEFT
    if chunk.members and chunk.inputs is None:
        return ClaimRefused.NO_INPUTS
    if chunk.attempts >= max_attempts:
        # Attempts are counted when claimed, so a chunk whose worker is killed every time (a poison
        # chunk) also ends here instead of being redelivered forever.
        chunk.status = ChunkStatus.FAILED.value
        chunk.error = f"gave up after {chunk.attempts} attempts" + (f"; last error: {chunk.error}"
                                                                    if chunk.error else " (its workers died)")
        chunk.finished_at = utcnow()
        return ClaimRefused.NO_ATTEMPTS_LEFT
    chunk.attempts += 1
    chunk.status = ChunkStatus.RUNNING.value
    chunk.worker = worker
    chunk.started_at = chunk.heartbeat_at = utcnow()
    return ClaimedChunk(run_id, chunk_no, chunk.attempts, decode_inputs(chunk.inputs) if chunk.inputs else [])


def beat_claim(session: Session, run_id: int, chunk_no: int, attempt: int) -> bool:
    """The claim of ``attempt`` is alive; False when the chunk is no longer this attempt's (taken back,
    claimed again, done)."""
    return bool(cast(CursorResult, session.execute(
        update(OfferRunChunk).where(OfferRunChunk.run_id == run_id, OfferRunChunk.chunk_no == chunk_no,
                                    OfferRunChunk.status == ChunkStatus.RUNNING,
                                    OfferRunChunk.attempts == attempt)
        .values(heartbeat_at=utcnow()))).rowcount)


def take_back_silent_claims(session: Session, run_id: int, silent_s: float) -> list[tuple[int, int, str | None]]:
    """Running chunks whose claim has not beaten for ``silent_s``: back to pending, with the reason
    as their error, to be queued again. Returns ``(chunk_no, attempt, worker)`` of each.

    Conditional on the claim still being silent when the row is locked, so a worker that beats at
    that moment keeps its chunk. A worker that was only slow (a long pause) and commits later is
    harmless: the first commit of a chunk wins, the other is discarded.
    """
    limit = utcnow() - timedelta(seconds=silent_s)
    silent = session.scalars(select(OfferRunChunk).where(
        OfferRunChunk.run_id == run_id, OfferRunChunk.status == ChunkStatus.RUNNING,
        OfferRunChunk.heartbeat_at < limit).order_by(OfferRunChunk.chunk_no).with_for_update()).all()
    taken = []
    for chunk in silent:
        chunk.status = ChunkStatus.PENDING.value
        chunk.error = (f"attempt {chunk.attempts}: its worker ({chunk.worker}) stopped reporting for more than "
                       f"{silent_s:g} s (killed, lost, or its attempt ended without a word); queued again")
        taken.append((chunk.chunk_no, chunk.attempts, chunk.worker))
    return taken


def record_attempt_error(session: Session, run_id: int, chunk_no: int, error: str, max_attempts: int) -> bool:
    """After a failed attempt: back to pending (True: retry) or failed when no attempt is left (False)."""
    chunk = session.get(OfferRunChunk, (run_id, chunk_no), with_for_update=True)
    if chunk is None or chunk.status == ChunkStatus.DONE:
        return False
    last = chunk.attempts >= max_attempts
    chunk.status = (ChunkStatus.FAILED if last else ChunkStatus.PENDING).value
    chunk.error = f"attempt {chunk.attempts}/{max_attempts}: {error}"
    if last:
        chunk.finished_at = utcnow()
    return not last


def fail_chunk(session: Session, run_id: int, chunk_no: int, error: str) -> None:
    """A chunk that cannot be scored at all (e.g. its worker lacks the partner): no more attempts."""
    session.execute(update(OfferRunChunk).where(OfferRunChunk.run_id == run_id, OfferRunChunk.chunk_no == chunk_no,
                                                OfferRunChunk.status != ChunkStatus.DONE)
                    .values(status=ChunkStatus.FAILED.value, error=error, finished_at=utcnow()))


def commit_chunk(session: Session, run_id: int, chunk_no: int, outcomes: list[MemberOutcome],
                 stats: dict[str, Any]) -> Commit:
    """Record the chunk's results, or say why nothing was written: a copy was first, or the run stopped.

    Lock order: the run row, then the chunk row. The run row is held FOR SHARE, so chunk commits of
    many workers run side by side, while the coordinator's finalise (FOR UPDATE) waits for those in
    flight and every later one sees the run stopped: a chunk commits entirely before an
    interruption or not at all. A chunk refused because the run stopped goes back to ``pending``
    (it stayed ``running`` for ever before), which ``--resume`` queues again. ``finished_at`` is
    set after the results are in, so a chunk's time includes its recording.
    """
    run_status = session.scalar(select(OfferRun.status).where(OfferRun.id == run_id).with_for_update(read=True))
    if run_status != RunStatus.RUNNING:
        session.execute(update(OfferRunChunk).where(OfferRunChunk.run_id == run_id, OfferRunChunk.chunk_no == chunk_no,
                                                    OfferRunChunk.status == ChunkStatus.RUNNING)
                        .values(status=ChunkStatus.PENDING.value, error=f"not recorded: {Commit.RUN_STOPPED.value}"))
        return Commit.RUN_STOPPED
    # Only a commit sets a chunk's stats: without them none of its members has a result to replace,
    # and the delete (8-36 ms of 5,000 lookups) is skipped.
    recorded_before = session.scalar(select(OfferRunChunk.stats).where(OfferRunChunk.run_id == run_id,
                                                                       OfferRunChunk.chunk_no == chunk_no))
    moved = cast(CursorResult, session.execute(
        update(OfferRunChunk)
        .where(OfferRunChunk.run_id == run_id, OfferRunChunk.chunk_no == chunk_no,
               OfferRunChunk.status != ChunkStatus.DONE)
        .values(status=ChunkStatus.DONE.value, stats=stats, error=None, inputs=None))).rowcount
    if not moved:
        return Commit.DUPLICATE
    started = time.perf_counter()
    if recorded_before:  # scored again by a resume (it had failed members): replace, never duplicate
        members = [o.member_id for o in outcomes]
        session.execute(delete(OfferResult).where(OfferResult.run_id == run_id, OfferResult.member_id.in_(members)))
    insert_outcomes(session, run_id, outcomes)
    session.execute(update(OfferRunChunk).where(OfferRunChunk.run_id == run_id, OfferRunChunk.chunk_no == chunk_no)
                    .values(stats={**stats, "record_s": round(time.perf_counter() - started, 4)},
                            finished_at=utcnow()))
    return Commit.COMMITTED


@dataclass(frozen=True)
class ChunkProgress:
    total: int
    done: int
    failed: int
    running: int
    members_done: int
    last_change: Any  # newest started_at/finished_at of any chunk (None before the first)
    first_failure: tuple[int, str] | None  # (chunk_no, error) of the lowest failed chunk


def chunk_progress(session: Session, run_id: int) -> ChunkProgress:
    rows = session.execute(select(OfferRunChunk.status, func.count(), func.sum(OfferRunChunk.members),
                                  func.max(OfferRunChunk.started_at), func.max(OfferRunChunk.finished_at))
                           .where(OfferRunChunk.run_id == run_id).group_by(OfferRunChunk.status)).all()
    counts = {status: (n, members or 0) for status, n, members, _, _ in rows}
    stamps = [stamp for *_, started, finished in rows for stamp in (started, finished) if stamp is not None]
    failure = None
    if ChunkStatus.FAILED in counts:
        failure = tuple(session.execute(select(OfferRunChunk.chunk_no, OfferRunChunk.error).where(
            OfferRunChunk.run_id == run_id, OfferRunChunk.status == ChunkStatus.FAILED)
            .order_by(OfferRunChunk.chunk_no).limit(1)).one())
    return ChunkProgress(total=sum(n for n, _ in counts.values()),
                         done=counts.get(ChunkStatus.DONE, (0, 0))[0],
                         failed=counts.get(ChunkStatus.FAILED, (0, 0))[0],
                         running=counts.get(ChunkStatus.RUNNING, (0, 0))[0],
                         members_done=counts.get(ChunkStatus.DONE, (0, 0))[1],
                         last_change=max(stamps) if stamps else None,
                         first_failure=failure)  # type: ignore[arg-type]


def chunk_span(session: Session, run_id: int) -> tuple[int, float] | None:
    """(members in done chunks, seconds from the first of them started to the last finished); None
    before the first is done."""
    members, first, last = session.execute(
        select(func.sum(OfferRunChunk.members), func.min(OfferRunChunk.started_at), func.max(OfferRunChunk.finished_at))
        .where(OfferRunChunk.run_id == run_id, OfferRunChunk.status == ChunkStatus.DONE)).one()
    if not members or first is None or last is None:
        return None
    return int(members), max((last - first).total_seconds(), 1e-3)


def waiting_chunks(session: Session, run_id: int) -> dict[int, str | None]:
    """Chunks queued (or to be queued again after a failed attempt) that no worker holds now, with
    the id of the task last sent for each."""
    return dict(session.execute(select(OfferRunChunk.chunk_no, OfferRunChunk.task_id).where(
        OfferRunChunk.run_id == run_id, OfferRunChunk.status == ChunkStatus.PENDING)
        .order_by(OfferRunChunk.chunk_no)).all())


def pending_task_ids(session: Session, run_id: int) -> list[str]:
    """Task ids of chunks not done: what an interruption or a failure revokes."""
    return list(session.scalars(select(OfferRunChunk.task_id).where(
        OfferRunChunk.run_id == run_id, OfferRunChunk.status.in_([ChunkStatus.PENDING, ChunkStatus.RUNNING]),
        OfferRunChunk.task_id.is_not(None))))


def chunk_stats(session: Session, run_id: int) -> Iterator[dict[str, Any]]:
    yield from (s for s in session.scalars(select(OfferRunChunk.stats).where(
        OfferRunChunk.run_id == run_id, OfferRunChunk.status == ChunkStatus.DONE)) if s)


def chunk_members(session: Session, run_id: int, chunk_nos: Iterable[int] | None = None) -> int:
    """Members in the run's stored chunks (only in ``chunk_nos`` when given)."""
    stmt = select(func.sum(OfferRunChunk.members)).where(OfferRunChunk.run_id == run_id)
    if chunk_nos is not None:
        stmt = stmt.where(OfferRunChunk.chunk_no.in_(sorted(chunk_nos)))
    return session.scalar(stmt) or 0
