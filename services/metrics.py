"""Prometheus metrics: one set per process, summed over gunicorn's workers by multiprocess mode.

Under gunicorn, ``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before
any worker starts: every worker writes its values to memory-mapped files there, ``/metrics``
adds them up, and ``child_exit`` marks a dead worker's gauges.  Without that variable (``flask
run``, tests, CLI commands) values live in the process and ``/metrics`` shows that process.

Label values are bounded by construction: route templates (not paths), upstream names from
configuration, fixed outcome words.  Never a member id, slug or raw path.
"""

from __future__ import annotations

import os
import sys
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# Sub-millisecond (a warm price is ~0.1 ms of work) to seconds (an upstream at its deadline).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric family Courier exports (see the README's observability section)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("courier_http_requests_total", "HTTP requests answered, by route template, "
                                "method and status.", ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("courier_http_request_duration_seconds", "Time to answer a request.",
                                         ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_calls = Counter("courier_upstream_calls_total", "Outbound calls by upstream and final "
                                      "outcome (ok, 4xx, 5xx, timeout, unreachable, invalid): one per call, its "
                                      "retries included, so sum() is calls.", ["upstream", "outcome"], registry=r)
        self.upstream_retries = Counter("courier_upstream_retries_total", "Attempts sent again within a call, "
                                        "by upstream (a failed status, connection, timeout or unusable answer).",
                                        ["upstream"], registry=r)
        self.upstream_seconds = Histogram("courier_upstream_call_duration_seconds", "Time of one outbound call, "
                                          "retries included.", ["upstream"], buckets=LATENCY_BUCKETS, registry=r)
        self.venue_cache = Counter("courier_venue_cache_events_total", "Venue data lookups by what happened "
                                   "(hits, misses, refreshes_ahead, revalidations, stale_served, missing_hits, "
                                   "backoff_skips, upstream_failures, db_loads, db_read_failures, "
                                   "persist_failures).", ["event"], registry=r)
        self.model_info = Gauge("courier_estimate_model_info", "The delivery-time model loaded (value 1).",
                                ["version"], registry=r, multiprocess_mode="max")
        self.prep_times_version = Gauge("courier_prep_times_version", "Version of the preparation times in "
                                        "memory.", registry=r, multiprocess_mode="max")
        self.realtime_offers = Counter("courier_realtime_offers_total", "Real-time offers by outcome (ok, "
                                       "partner_error, not_scorable, invalid).", ["outcome"], registry=r)
        self.offer_runs = Counter("courier_offer_runs_total", "Offers runs finished, by final status.",
                                  ["status"], registry=r)
        self.offer_members = Counter("courier_offer_members_total", "Members of offers runs by outcome.",
                                     ["outcome"], registry=r)
        self.offer_step_items = Counter("courier_offer_step_items_total", "Items through each step of offers "
                                        "runs.", ["step"], registry=r)
        self.offer_step_seconds = Counter("courier_offer_step_seconds_total", "Seconds spent in each step of "
                                          "offers runs.", ["step"], registry=r)
        # Saturation, what a sync-worker deployment scales on: a worker serves one request at a time,
        # so in-flight requests / workers is the busy share ("livesum": a dead worker's share goes
        # with it, in child_exit). The scrape that reads them is one of the requests in flight.
        self.requests_in_flight = Gauge("courier_http_requests_in_flight", "Requests being answered now (under "
                                        "gunicorn's sync workers: busy workers).", registry=r,
                                        multiprocess_mode="livesum")
        self.workers = Gauge("courier_workers", "gunicorn worker processes serving.", registry=r,
                             multiprocess_mode="livesum")

    def upstream_call(self, upstream: str, outcome: str, seconds: float) -> None:
        """One outbound call's outcome and duration (the sync and the async client alike)."""
        self.upstream_calls.labels(upstream, outcome).inc()
        self.upstream_seconds.labels(upstream).observe(seconds)

    def render(self) -> bytes:
        """The exposition text: summed over every worker in multiprocess mode, else this process;
        with every process's own resource use (``ServerProcesses``)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            # Under gunicorn a worker's parent is the master; a command writing here has no such parent.
            master = os.getppid() if "gunicorn.arbiter" in sys.modules else None
            registry.register(ServerProcesses(gunicorn_master=master))
            return generate_latest(registry)
        if self._own_process is None:
            self._own_process = ServerProcesses(gunicorn_master=None)
            self.registry.register(self._own_process)
        return generate_latest(self.registry)

    _own_process: ServerProcesses | None = None


class ServerProcesses:
    """Resource use of every process of this server, read from ``/proc`` at scrape time.

    prometheus_client's own process collector describes only the process that answers the scrape,
    and multiprocess mode drops it altogether; under gunicorn the scrape lands on any one worker.
    So the worker answering reads ``/proc`` for gunicorn's master (its parent) and every worker (the
    master's children): RSS, CPU seconds and open file descriptors by ``role`` and ``pid`` (bounded:
    the pids of the workers alive now). Nothing is written per request. Outside gunicorn (``flask
    run``, tests, commands): this process alone, as role ``main``. Linux only (``/proc``); a process
    that exits during the scrape is left out.
    """

    _PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    _TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, gunicorn_master: int | None) -> None:
        self.gunicorn_master = gunicorn_master

    def processes(self) -> list[tuple[str, int]]:
        """(role, pid) of each process to describe."""
        master = self.gunicorn_master
        if master is None:
            return [("main", os.getpid())]
        try:
            with open(f"/proc/{master}/task/{master}/children") as handle:
                children = [int(pid) for pid in handle.read().split()]
        except OSError:  # no /proc, or a kernel without the children file: what we can see
            children = [os.getpid()]
        return [("master", master)] + [("worker", pid) for pid in children]

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rss = GaugeMetricFamily("courier_process_resident_memory_bytes", "Resident memory of each server "
                                "process.", labels=["role", "pid"])
        cpu = CounterMetricFamily("courier_process_cpu_seconds", "CPU seconds (user + system) of each server "
                                  "process.", labels=["role", "pid"])
        fds = GaugeMetricFamily("courier_process_open_fds", "Open file descriptors of each server process.",
                                labels=["role", "pid"])
        for role, pid in self.processes():
            try:
                with open(f"/proc/{pid}/stat", "rb") as handle:
                    # Fields after the command name (which may hold spaces): utime is the 14th field.
                    fields = handle.read().rsplit(b")", 1)[1].split()
                open_fds = len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                continue
            labels = [role, str(pid)]
            rss.add_metric(labels, int(fields[21]) * self._PAGE_SIZE)
            cpu.add_metric(labels, (int(fields[11]) + int(fields[12])) / self._TICKS)
            fds.add_metric(labels, open_fds)
        return [rss, cpu, fds]


_metrics: Metrics | None = None
_lock = threading.Lock()


def metrics() -> Metrics:
    """The process's metrics, built on first use (not at import: nothing happens at import time)."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics
