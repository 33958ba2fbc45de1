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
        self.upstream_calls = Counter("courier_upstream_calls_total", "Outbound calls by upstream and outcome "
                                      "(ok, retried, 4xx, 5xx, timeout, unreachable, invalid).",
                                      ["upstream", "outcome"], registry=r)
        self.upstream_seconds = Histogram("courier_upstream_call_duration_seconds", "Time of one outbound call, "
                                          "retries included.", ["upstream"], buckets=LATENCY_BUCKETS, registry=r)
        self.venue_cache = Counter("courier_venue_cache_events_total", "Venue data lookups by what happened "
                                   "(hits, misses, refreshes_ahead, revalidations, stale_served, missing_hits, "
                                   "backoff_skips, upstream_failures, db_loads, persist_failures).", ["event"],
                                   registry=r)
        self.model_info = Gauge("courier_estimate_model_info", "The delivery-time model loaded (value 1).",
                                ["version"], registry=r, multiprocess_mode="max")
        self.prep_times_version = Gauge("courier_prep_times_version", "Version of the preparation times in "
                                        "memory.", registry=r, multiprocess_mode="max")
        self.realtime_offers = Counter("courier_realtime_offers_total", "Real-time offers by outcome (ok, "
                                       "partner_error, no_transactions, invalid).", ["outcome"], registry=r)
        self.offer_runs = Counter("courier_offer_runs_total", "Offers runs finished, by final status.",
                                  ["status"], registry=r)
        self.offer_members = Counter("courier_offer_members_total", "Members of offers runs by outcome.",
                                     ["outcome"], registry=r)
        self.offer_step_items = Counter("courier_offer_step_items_total", "Items through each step of offers "
                                        "runs.", ["step"], registry=r)
        self.offer_step_seconds = Counter("courier_offer_step_seconds_total", "Seconds spent in each step of "
                                          "offers runs.", ["step"], registry=r)

    def upstream_call(self, upstream: str, outcome: str, seconds: float) -> None:
        """One outbound call's outcome and duration (the sync and the async client alike)."""
        self.upstream_calls.labels(upstream, outcome).inc()
        self.upstream_seconds.labels(upstream).observe(seconds)

    def render(self) -> bytes:
        """The exposition text: summed over every worker in multiprocess mode, else this process."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


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
