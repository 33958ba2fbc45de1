"""The status words of offers runs and of each member's result: one declaration, used everywhere.

``StrEnum`` members are the strings stored in the database, written to exports and sent over REST,
so the wire format is exactly these values.
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    QUEUED = "queued"  # submitted over REST (or resumed there), waiting for a coordinator worker
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every member scored or skipped
    COMPLETED_WITH_FAILURES = "completed_with_failures"  # went through; some members failed
    FAILED = "failed"  # could not go on (ping, circuit breaker, database write)
    INTERRUPTED = "interrupted"  # Ctrl-C or TERM, or cancelled over REST
    ABANDONED = "abandoned"  # shown, never stored: running, but its process stopped beating


class MemberStatus(enum.StrEnum):
    SCORED = "scored"
    SKIPPED = "skipped"
    FAILED = "failed"


# Exit codes of `flask run-offers` by final status.
EXIT_CODES = {RunStatus.SUCCEEDED: 0, RunStatus.COMPLETED_WITH_FAILURES: 1, RunStatus.FAILED: 1,
              RunStatus.INTERRUPTED: 130}
