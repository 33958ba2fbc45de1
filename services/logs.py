"""Structured (JSON lines) logging with the current request id on every record."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

# Set by the web layer per request and by CLI commands per run; read by the log filter, so
# any module's log lines carry the id without passing it around.
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("courier_request_id", default=None)

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Install one JSON handler on the root logger (idempotent, so tests can build many apps)."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if getattr(handler, "_courier", False):
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler._courier = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # Alembic narrates every step at INFO; keep admins' terminals to what matters.
    logging.getLogger("alembic").setLevel(logging.WARNING)
