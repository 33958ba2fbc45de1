"""What one process holds for its whole life: the engine, the session factory, upstream clients.

Built once by the app factory; ``close()`` is called on graceful shutdown (gunicorn's
``worker_exit``) so pooled sockets and database connections are released cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

# A readiness check returns None when ready, or a short reason why not.
ReadinessCheck = Callable[[], str | None]


@dataclass
class Runtime:
    engine: Engine
    session_factory: sessionmaker
    readiness_checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    closers: list[Callable[[], Any]] = field(default_factory=list)
    # Loads worth doing once per process before traffic (gunicorn's post_worker_init calls warm_up).
    warmers: dict[str, Callable[[], Any]] = field(default_factory=dict)

    def session(self) -> Session:
        return self.session_factory()

    def warm_up(self) -> dict[str, str]:
        """Run every warmer; a failure is logged and returned, never raised (the worker still serves)."""
        failures = {}
        for name, warm in self.warmers.items():
            try:
                warm()
            except Exception as exc:  # noqa: BLE001 - e.g. database down: the first request retries
                failures[name] = f"{type(exc).__name__}"
                logging.getLogger("courier").warning("warm-up failed", extra={"cache": name,
                                                                              "error": failures[name]})
        return failures

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.engine.dispose()
