"""Why a run cannot start or change: typed, so callers decide on the kind, never on the text.

Apart from the modules that raise them so that importing one (the REST blueprint does, at start-up)
brings in neither polars nor Celery.
"""

from __future__ import annotations

from services.errors import CourierError


class DistributedUnavailable(Exception):
    """Distributed runs cannot start here (no Celery installed, broker unreachable); the message says
    what to install or set."""


class RunsUnavailable(CourierError):
    """Runs cannot be started from here (no shared database, no broker); the message says what to set."""

    status = 503
    code = "runs_unavailable"


class RunConflict(CourierError):
    """The run is not in a state that allows the request (resume a succeeded run, say)."""

    status = 409
    code = "run_conflict"
