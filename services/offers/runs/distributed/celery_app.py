"""Celery wiring of distributed offers runs: the Celery app, the chunk task, the queue the coordinator uses.

Celery (with Redis as broker and result backend) is the optional ``distributed`` extra; nothing
here imports it before a distributed run or a worker asks. The app is built from the Flask app
factory's settings, and every task runs inside ``context_factory()`` (Flask's app context, passed
in by ``app.py``: Flask's "Background Tasks with Celery" pattern without importing Flask here).

Delivery guarantees (README, "Distributed runs"):
- ``acks_late`` + ``task_reject_on_worker_lost``: a chunk is acknowledged only after its task
  returned, i.e. after its results were committed; a worker process that dies mid-chunk has its
  message requeued (prefork child lost) or redelivered by Redis after the visibility timeout
  (the whole worker host lost), and the chunk's idempotent commit makes a second copy harmless;
- ``worker_prefetch_multiplier = 1``: a worker holds one chunk per process, never a backlog a
  dying worker would take down with it;
- retries: a failed attempt is recorded on the chunk and retried with backoff until
  ``OFFERS_CHUNK_MAX_ATTEMPTS`` attempts were claimed; then the chunk, and the run, fail.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

from sqlalchemy.orm import sessionmaker

from services.logs import request_id_var
from services.offers.runs.distributed.worker import ChunkAttemptFailed, ChunkJob, ChunkOutcome, score_chunk
from services.offers.runs.errors import DistributedUnavailable

log = logging.getLogger("courier.offers.celery")

TASK_NAME = "courier.offers.score_chunk"
# Runs submitted over REST are coordinated by a task on a queue of its own, served by a worker of its
# own (`celery -A wsgi:celery_app worker -Q courier.runs --pool threads`): a coordinator waits for
# its chunks for the whole run, and on the chunk workers' queue it would hold a slot those chunks need
# (with one slot: until the stall time).
COORDINATE_TASK_NAME = "courier.offers.coordinate_run"
RUNS_QUEUE = "courier.runs"
RETRY_BACKOFF_MAX_S = 30  # between attempts of one chunk: 1, 2, 4, ... s, a flapping partner gets air


def display_url(url: str) -> str:
    """The broker URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


@dataclass(frozen=True)
class CelerySettings:
    broker_url: str
    result_backend: str | None
    visibility_timeout_s: int
    chunk_max_attempts: int
    chunk_heartbeat_s: float = 5.0


@dataclass(frozen=True)
class RunSettings:
    """How a coordinator worker runs a submitted run (the CLI takes these from its options)."""

    chunk_size: int
    stall_s: float
    silent_s: float
    max_consecutive_failures: int
    database_outage_s: float


class DistributedOffers:
    """What a process needs for distributed runs: the Celery app (built on first use) and its queue."""

    def __init__(self, settings: CelerySettings, context_factory: Callable[[], AbstractContextManager[Any]],
                 sessions: sessionmaker, partner_config: Callable[[str], Any],
                 run_settings: RunSettings | None = None) -> None:
        self.settings = settings
        self.run_settings = run_settings
        self.shutting_down = threading.Event()  # set by Celery's worker_shutting_down signal
        self.context_factory = context_factory
        self.sessions = sessions
        self.partner_config = partner_config  # partner name -> PartnerConfig, from this process's registry

    @cached_property
    def celery(self):
        try:
            from celery import Celery
        except ImportError:
            raise DistributedUnavailable("distributed runs need Celery: pip install -e '.[distributed]'") from None
        settings = self.settings
        # kombu sweeps the unacknowledged messages every interval x throttle seconds (10 x 10 by
        # default): a dead worker's chunk would wait up to 100 s past its visibility timeout. One
        # ZRANGEBYSCORE every <= 10 s per worker is nothing; a lost chunk is back within VT + 10 s.
        sweep_s = max(1, min(10, settings.visibility_timeout_s // 3))
        transport = {"visibility_timeout": settings.visibility_timeout_s, "socket_connect_timeout": 3,
                     "socket_timeout": 10, "unacked_restore_interval": sweep_s, "unacked_restore_throttle": 1}
        celery = Celery("courier")
        celery.conf.update(
            broker_url=settings.broker_url,
            result_backend=settings.result_backend or settings.broker_url,
            broker_transport_options=transport,
            result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
            task_serializer="json", result_serializer="json", accept_content=["json"],
            result_expires=86400,  # chunk task states are for inspection; the database holds the truth
            task_track_started=True,
            worker_hijack_root_logger=False,  # keep Courier's JSON/text logging with run ids
            broker_connection_retry_on_startup=True,
            broker_connection_timeout=3,
            task_routes={COORDINATE_TASK_NAME: {"queue": RUNS_QUEUE}},
        )
        self._register(celery)
        return celery

    def _register(self, celery) -> None:
        owner = self

        @celery.task(name=TASK_NAME, bind=True, max_retries=None)
        def score_chunk_task(task, message: dict[str, Any]) -> dict[str, Any]:
            job = ChunkJob(**message)
            token = request_id_var.set(f"run-{job.run_id}")
            try:
                with owner.context_factory():
                    outcome = owner.score(job, worker=task.request.hostname or "worker")
            except ChunkAttemptFailed as exc:
                countdown = min(RETRY_BACKOFF_MAX_S, 2 ** task.request.retries)
                raise task.retry(exc=exc, countdown=countdown) from None
            finally:
                request_id_var.reset(token)
            return asdict(outcome)

        self.task = score_chunk_task

        # acks_late: a coordinator worker that dies mid-run has its message delivered again (after the
        # visibility timeout), and the new coordinator takes the run over once its lease went stale.
        @celery.task(name=COORDINATE_TASK_NAME, acks_late=True, reject_on_worker_lost=True)
        def coordinate_run_task(run_id: int) -> str:
            token = request_id_var.set(f"run-{run_id}")
            try:
                with owner.context_factory():
                    return owner.coordinate(run_id)
            finally:
                request_id_var.reset(token)

        self.coordinate_task = coordinate_run_task

        from celery.signals import worker_shutting_down

        # A warm shutdown (SIGTERM: a deploy, `compose stop`) waits for running tasks; a coordinator's
        # lasts the whole run. It hands its run back to the queue instead (``coordinate``).
        worker_shutting_down.connect(lambda **_: owner.shutting_down.set(), weak=False)

    def coordinate(self, run_id: int) -> str:
        """The coordinator task's body: the submitted run's frame, on this process's workers' queue."""
        from services.offers.runs.coordination import CoordinationSettings, coordinate
        from services.offers.runs.distributed.coordinator import DistributedSettings, run_distributed

        if self.run_settings is None:
            raise RuntimeError("this process was built without run settings")
        run = self.run_settings
        queue = self.queue()
        distributed = DistributedSettings(chunk_size=run.chunk_size, stall_s=run.stall_s, silent_s=run.silent_s)

        def frame(partner, options, *, stop):
            return run_distributed(self.sessions, partner, options, queue, distributed, stop=stop)

        return coordinate(self.sessions, run_id, self.partner_config, frame,
                          CoordinationSettings(run.max_consecutive_failures, run.database_outage_s),
                          starter=queue, shutdown=self.shutting_down)

    def score(self, job: ChunkJob, *, worker: str):
        """The task body: one chunk with this process's partner registry and database."""
        from services.offers.runs.distributed.chunks import fail_chunk

        try:
            partner = self.partner_config(job.partner)
        except Exception as exc:  # noqa: BLE001 - a worker configured differently cannot score this run
            error = f"worker {worker} cannot load partner {job.partner!r}: {getattr(exc, 'message', exc)}"
            with self.sessions() as session, session.begin():
                fail_chunk(session, job.run_id, job.chunk_no, error)
            log.error("chunk failed", extra={"run_id": job.run_id, "chunk": job.chunk_no, "error": error})
            return ChunkOutcome(job.run_id, job.chunk_no, "failed")
        return score_chunk(self.sessions, partner, job, worker=worker,
                           max_attempts=self.settings.chunk_max_attempts, beat_s=self.settings.chunk_heartbeat_s)

    def queue(self) -> CeleryChunkQueue:
        return CeleryChunkQueue(self)


def _task_id(raw: bytes | str, delivered: bool = False) -> str | None:
    """The task id in one of kombu's Redis messages (a JSON envelope; an unacknowledged one is
    ``[envelope, exchange, routing_key]``); None for anything else."""
    try:
        message = json.loads(raw)
        envelope = message[0] if delivered else message
        return str(envelope["headers"]["id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _reach(connection) -> None:
    """Connect once, within 3 s, or raise: kombu on its own (``default_channel`` included) retries an
    unreachable broker for ever, which would hang the command that asked."""
    connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)


class CeleryChunkQueue:
    """The coordinator's side: check the broker, enqueue chunk tasks, revoke them."""

    def __init__(self, distributed: DistributedOffers) -> None:
        self.distributed = distributed

    def check(self) -> None:
        celery = self.distributed.celery
        url = display_url(self.distributed.settings.broker_url)
        try:
            with celery.connection_for_write() as connection:
                _reach(connection)
        except Exception as exc:  # noqa: BLE001 - any failure to connect means the same to the user
            raise DistributedUnavailable(f"cannot reach the Celery broker at {url} ({type(exc).__name__}: {exc}); "
                                         "start Redis or set COURIER_CELERY_BROKER_URL") from None

    def start_run(self, run_id: int) -> None:
        """Queue the coordinator task of a submitted run (``services.offers.runs.submitted``)."""
        self.distributed.coordinate_task.apply_async(args=[run_id], queue=RUNS_QUEUE)

    def enqueue(self, job: ChunkJob, task_id: str) -> None:
        self.distributed.task.apply_async(args=[job.as_message()], task_id=task_id)

    def held(self, task_ids: Collection[str]) -> set[str] | None:
        """Which of ``task_ids`` are in the default queue or delivered and unacknowledged (kombu's
        Redis transport keeps those in its ``unacked`` hash until the late ack); None if Redis cannot
        be asked. Messages are matched by task id (kombu's JSON envelope, ``headers.id``), so other
        runs' tasks, or stale ones, are not mistaken for this run's. Read only after 30 s without
        progress: one LRANGE and one HVALS."""
        celery = self.distributed.celery
        wanted = set(task_ids)
        try:
            with celery.connection_for_read() as connection:
                _reach(connection)
                channel = connection.default_channel
                client = channel.client
                queued = client.lrange(celery.conf.task_default_queue, 0, -1)
                delivered = client.hvals(channel.unacked_key)
        except Exception:  # noqa: BLE001 - unreachable (or not Redis): we cannot say
            return None
        found = {_task_id(raw) for raw in queued} | {_task_id(raw, delivered=True) for raw in delivered}
        return wanted & found

    def diagnose(self) -> str | None:
        """Why no chunk moves, when the workers can say: none answers, or none knows the task (a
        worker of another Courier version discards it as unregistered)."""
        try:
            replies = self.distributed.celery.control.inspect(timeout=1.0).registered() or {}
        except Exception:  # noqa: BLE001 - the broker is unreachable: the caller says so already
            return None
        if not replies:
            return "no worker answered"
        if all(TASK_NAME not in tasks for tasks in replies.values()):
            return (f"the workers that answered ({', '.join(sorted(replies))}) do not know the task {TASK_NAME}: "
                    "another version of Courier? They discard its messages")
        return None

    def revoke(self, task_ids: list[str]) -> None:
        if task_ids:
            try:
                self.distributed.celery.control.revoke(task_ids)
            except Exception:  # noqa: BLE001 - revoking saves work only: a revoked-too-late task is refused by claim
                log.warning("could not revoke chunk tasks", extra={"tasks": len(task_ids)}, exc_info=True)
