"""Waiting for what a process needs before it starts: a container's dependencies.

Compose and Kubernetes start containers in no useful order (podman does not even run compose
healthchecks), so each of Courier's containers waits for its own dependencies before its command:
the migrate job for the database, web and workers for a migrated database, workers for the broker
too (``flask wait-for``, run by the image's entrypoint from ``COURIER_WAIT_FOR``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.db import driver_reason

# A check returns None when its dependency is ready, else a short reason; raising counts as a reason.
Check = Callable[[], str | None]


@dataclass(frozen=True)
class WaitOutcome:
    ready: bool
    waited_s: float
    pending: dict[str, str]  # dependency -> why it is not ready (empty when ready)


def reason_of(exc: BaseException) -> str:
    """One line for an exception: its type and the first line of its message (a driver's error can
    run to several lines)."""
    cause = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    first_line = driver_reason(exc)
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__


def wait_for(checks: Mapping[str, Check], timeout_s: float, *, interval_s: float = 0.5,
             on_pending: Callable[[dict[str, str], float], None] | None = None,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> WaitOutcome:
    """Run every check until all pass or ``timeout_s`` has passed; a check that passed is not asked
    again. ``on_pending(pending, elapsed_s)`` hears after each round that left some pending."""
    started = clock()
    pending = dict.fromkeys(checks, "not checked yet")
    while True:
        for name in list(pending):
            try:
                reason = checks[name]()
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet", said in one line
                reason = reason_of(exc)
            if reason is None:
                del pending[name]
            else:
                pending[name] = reason
        elapsed = clock() - started
        if not pending or elapsed >= timeout_s:
            return WaitOutcome(ready=not pending, waited_s=elapsed, pending=pending)
        if on_pending is not None:
            on_pending(dict(pending), elapsed)
        sleep(min(interval_s, max(0.0, timeout_s - elapsed)))
