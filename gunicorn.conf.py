"""gunicorn settings for Courier. Every value can be set from the environment.

| variable | default | meaning |
| COURIER_BIND | 127.0.0.1:8000 | address to listen on |
| COURIER_WORKERS | 2 x cores + 1 | sync worker processes |
| COURIER_TIMEOUT | 30 | seconds before a silent worker is killed and replaced |
| COURIER_GRACEFUL_TIMEOUT | 30 | seconds a worker gets to finish in-flight requests on shutdown |
| COURIER_KEEPALIVE | 2 | seconds to keep an idle client connection (sync workers close anyway) |
| COURIER_CONTROL_SOCKET | ~/.gunicorn/courier-<bind>.ctl | gunicornc control socket; one per instance |

Sync workers serve one connection at a time, from the request's first byte to the response's
last: slow clients can hold every worker.  Run Courier behind a buffering reverse proxy
(deploy/nginx-courier.conf, tested in tests/test_deployment.py); never expose gunicorn directly.
"""

import gc
import json
import multiprocessing
import os
import shutil
import sys
import tempfile

from gunicorn import glogging

from config import ConfigError, load_gunicorn_settings, load_settings, warn_unknown_variables

# Under gunicorn, logs go to a collector: JSON lines unless the operator asks for text.
os.environ.setdefault("COURIER_LOG_FORMAT", "json")

try:
    _settings = load_gunicorn_settings()  # every COURIER_* gunicorn variable, typed and range-checked
    # The app's settings too, here in the master: a bad one stops gunicorn at once with its message,
    # instead of every worker failing to boot in turn.
    _app_settings = load_settings()
except ConfigError as exc:
    sys.exit(f"configuration error: {exc}")


def _warn(message: str) -> None:  # before logging is set up: a JSON line like the app's own
    print(json.dumps({"level": "WARNING", "logger": "courier.config", "msg": message}), file=sys.stderr, flush=True)


warn_unknown_variables(os.environ, _app_settings["PARTNERS_FILE"], _warn)  # once; forked workers inherit

# Prometheus multiprocess mode: every worker writes its metrics to files in one folder, /metrics
# sums them.  It must be in the environment before a worker imports prometheus_client, and start
# empty (files of a previous run would be counted again).
_metrics_dir = _app_settings["METRICS_DIR"] or tempfile.mkdtemp(prefix="courier-metrics-")
shutil.rmtree(_metrics_dir, ignore_errors=True)
os.makedirs(_metrics_dir, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

bind = _settings["BIND"]
workers = _settings["WORKERS"] or multiprocessing.cpu_count() * 2 + 1
worker_class = "sync"
timeout = _settings["TIMEOUT"]
graceful_timeout = _settings["GRACEFUL_TIMEOUT"]
keepalive = _settings["KEEPALIVE"]
# gunicorn >= 25 opens a control socket at one fixed path per user by default, so a second instance
# on the same machine (a benchmark's, a test's) took over the first one's: one socket per bind.
control_socket = _settings["CONTROL_SOCKET"] or os.path.join(
    os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".gunicorn"),
    "courier-" + "".join(c if c.isalnum() or c in ".-" else "-" for c in bind) + ".ctl")
# Access lines come from the app itself (JSON, with the request id); gunicorn's would double them.
accesslog = None


class _AppWritesTheAccessLine(glogging.Logger):
    """gunicorn's logger without its access line, which the app writes (``services.logs.AccessLog``).

    With ``logconfig_dict`` set (below), gunicorn builds its access line's atoms for every request
    and hands them to a logger with no handler: thrown away, at ~50 us of a worker's CPU per request
    (py-spy over a sync worker under wrk: ``Logger.access`` was 10% of its samples, bare route and
    estimate alike).
    """

    def access(self, resp, req, environ, request_time) -> None:  # noqa: ANN001 - gunicorn's signature
        return None


logger_class = _AppWritesTheAccessLine
errorlog = "-"
loglevel = _settings["GUNICORN_LOG_LEVEL"]


def post_fork(server, worker):
    """With preload_app the master built the app: drop inherited DB connections (never share a socket)."""
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("courier") if app is not None else None
    if runtime is not None:
        runtime.engine.dispose(close=False)


def post_worker_init(worker):
    """Load per-process caches (the estimate's preparation times) before taking traffic: a worker
    that first meets the database during an outage cannot answer estimates; one warmed here can."""
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("courier") if app is not None else None
    if runtime is not None:
        runtime.warm_up()
    # One per live worker (livesum; child_exit drops a dead one's): the denominator of saturation.
    from services.metrics import metrics

    metrics().workers.set(1)
    # Everything loaded so far (Flask, SQLAlchemy, polars, the model) lives as long as the worker:
    # move it out of the garbage collector's sight, so a full collection during a request walks
    # only what requests allocate (tail latency; the Instagram/gunicorn recipe).
    gc.freeze()


def child_exit(server, worker):
    """A worker died or was replaced: its live gauges no longer count (prometheus_client's rule)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)


def worker_exit(server, worker):
    """Graceful shutdown: close pooled HTTP sessions and database connections."""
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("courier") if app is not None else None
    if runtime is not None:
        runtime.close()

# gunicorn's own lines (boot, worker start/exit, timeouts) as JSON too, like the app's.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "services.logs.JsonFormatter"}},
    "handlers": {"error_console": {"class": "logging.StreamHandler", "formatter": "json",
                                   "stream": "ext://sys.stderr"}},
    "root": {"level": "WARNING", "handlers": []},
    "loggers": {"gunicorn.error": {"level": loglevel.upper(), "handlers": ["error_console"], "propagate": False}},
}
