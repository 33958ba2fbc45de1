"""What one process holds for its whole life: the engine, the session factory, upstream clients.

Built once by the app factory; ``close()`` is called on graceful shutdown (gunicorn's
``worker_exit``) so pooled sockets and database connections are released cleanly.
"""

from __future__ import annotations

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
    services: dict[str, Any] = field(default_factory=dict)

    def session(self) -> Session:
        return self.session_factory()

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.engine.dispose()
