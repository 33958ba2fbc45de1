"""Venue data for pricing: per-process memory, then the database, then the upstream venue API.

A warm request is a dict lookup and two float comparisons: no network, no database.  Data in
the last 20% of a half's TTL is refreshed in the background (refresh-ahead).  Data past its
TTL but younger than ``max_stale_s`` is served at once while one background refresh runs
(stale-while-revalidate): a slow or failing upstream never makes a request wait when there is
something to serve.  Only a request with nothing servable waits for upstream, at most the
venue API deadline, and concurrent requests for one slug share that one fetch (single flight).
A failed refresh is logged and counted, and the slug is not tried upstream again for
``failure_backoff_s``: one flaky venue cannot turn every request into a slow retry loop.

The store owns its short database transactions: it persists what it fetched as a side effect
of a read request, and that must not depend on the outcome of the request's own unit of work.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.orm import sessionmaker

from services.errors import NotFound, UpstreamError, UpstreamNotFound, UpstreamTimeout, UpstreamUnavailable
from services.metrics import metrics
from services.pricing.venue_api import VenueApiClient
from services.pricing.venue_data import VenueData
from services.pricing.venue_repo import load_venue, upsert_venue

log = logging.getLogger("courier.pricing")


@dataclass(frozen=True)
class VenueCachePolicy:
    static_ttl_s: float = 3600
    dynamic_ttl_s: float = 60
    max_stale_s: float = 86400
    failure_backoff_s: float = 5.0
    enabled: bool = True
    # Refresh ahead: a request seeing data in the last 20% of its TTL starts a background refresh
    # and is answered at once, so steady traffic never waits on upstream and data is rarely served
    # past its TTL while upstream answers.
    refresh_ahead: float = 0.8
    # How long a request may wait for a fetch another thread started (the venue API deadline plus
    # a margin for the database write): past it the request answers 504 instead of waiting on.
    wait_s: float = 3.0


@dataclass(frozen=True)
class _Entry:
    data: VenueData
    static_at: float
    dynamic_at: float


@dataclass(frozen=True)
class _Failure:
    until: float
    error: UpstreamError
    consecutive: int


# Consecutive failures double the pause before the next upstream attempt, up to this many times
# the configured interval: a venue that stays down costs one attempt every few minutes, not
# one every few seconds per worker.
MAX_BACKOFF_FACTOR = 64
# Per-slug failure and not-found records kept at most; past it, expired ones go first, then the
# oldest tenth.  Forgetting one costs at most one extra upstream attempt for that slug.
MAX_SLUG_RECORDS = 10_000


def venue_not_found(slug: str, why: str) -> NotFound:
    return NotFound(f"Venue {slug!r} not found: {why}.", code="venue_not_found", details={"venue_slug": slug})


class VenueStore:
    def __init__(
        self,
        client: VenueApiClient | None,
        session_factory: sessionmaker,
        policy: VenueCachePolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client  # None: offline, stored data only
        self.policy = policy
        self._sessions = session_factory
        self._clock = clock
        self._mem: dict[str, _Entry] = {}
        self._failures: dict[str, _Failure] = {}
        # Slugs known not to exist, until when: a client asking for one again and again must not
        # turn each request into an upstream call (or a database read, offline).
        self._missing: dict[str, float] = {}
        # Fetches in flight, one per slug (single flight); an entry lives only while its fetch runs,
        # so the map is bounded by the fetches running, not by the slugs ever asked for.
        self._inflight: dict[str, Future] = {}
        self._guard = threading.Lock()
        # Two pools on purpose: background refreshes wait on half-fetches, so they must never run in
        # the pool that executes those fetches (all 8 threads as refreshes waiting on fetches queued
        # behind them was a deadlock).
        self._executor: ThreadPoolExecutor | None = None
        self._refresher: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self.stats: Counter[str] = Counter()
        self._events = metrics().venue_cache
        # Set while the database fails us: its first failure is logged, the rest only counted, until
        # a read or write works again (a database outage must not write a traceback per price).
        self._database_down = False

    # -- public ---------------------------------------------------------------------------------
    def get(self, slug: str) -> VenueData:
        if not self.policy.enabled:
            return self._fetch_uncached(slug)
        entry = self._mem.get(slug)
        if entry is not None:
            if self.client is None:
                self._count("hits")
                return entry.data
            served = self._serve(slug, entry, self._clock())
            if served is not None:
                return served
        return self._slow_get(slug)

    def forget(self, slug: str | None = None) -> None:
        """Drop in-memory data (all of it when ``slug`` is None); the database copy stays."""
        if slug is None:
            self._mem.clear()
            self._failures.clear()
            self._missing.clear()
        else:
            self._mem.pop(slug, None)
            self._failures.pop(slug, None)
            self._missing.pop(slug, None)

    def wait_for_refreshes(self, timeout: float = 5.0) -> None:
        """Block until fetches started so far are done (tests, shutdown); their errors are theirs."""
        for future in list(self._inflight.values()):
            try:
                future.result(timeout=timeout)
            except FutureTimeout:
                raise
            except Exception:  # noqa: BLE001 - a failed refresh is recorded by the refresh itself
                pass

    def fetch_fresh(self, slug: str) -> VenueData:
        """Both halves straight from upstream (admin refresh); raises our upstream errors."""
        if self.client is None:
            raise venue_not_found(slug, "the venue API is off (offline mode)")
        try:
            static, dynamic = self._fetch_both(slug)
        except UpstreamNotFound as exc:
            raise venue_not_found(slug, "the venue API does not know it") from exc
        now = datetime.fromtimestamp(self._clock(), UTC)
        return VenueData(slug, static, now, dynamic, now)

    def close(self) -> None:
        if self._executor is not None and self._executor_pid == os.getpid():
            if self._refresher is not None:
                self._refresher.shutdown(wait=False, cancel_futures=True)
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._refresher = None
        if self.client is not None:
            self.client.close()

    # -- internals ------------------------------------------------------------------------------
    def _count(self, event: str) -> None:
        """This store's own counter (tests, a debugger) and the Prometheus one (summed over workers)."""
        self.stats[event] += 1
        self._events.labels(event).inc()

    def _pool(self) -> ThreadPoolExecutor:
        """The fetch pool (and, built with it, the refresh pool)."""
        # Threads do not survive fork: build the pools in the process that uses them.
        if self._executor is None or self._executor_pid != os.getpid():
            with self._guard:
                if self._executor is None or self._executor_pid != os.getpid():
                    self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="venue-fetch")
                    self._refresher = ThreadPoolExecutor(max_workers=4, thread_name_prefix="venue-refresh")
                    self._executor_pid = os.getpid()
        return self._executor

    def _remember(self, records: dict, slug: str, value) -> None:
        """Insert ``slug`` last, keeping ``records`` under MAX_SLUG_RECORDS in amortised O(1).

        Records are inserted in time order (re-inserted when renewed), so the front holds the
        oldest; when full, the oldest tenth goes.  A random-slug flood therefore costs a bounded
        dict, and eviction never touches a fetch in flight (those live in ``_inflight``).
        """
        with self._guard:
            records.pop(slug, None)
            if len(records) >= MAX_SLUG_RECORDS:
                for old in list(itertools.islice(records, MAX_SLUG_RECORDS // 10)):
                    del records[old]
            records[slug] = value

    def _entry(self, data: VenueData) -> _Entry:
        return _Entry(data, data.static_fetched_at.timestamp(), data.dynamic_fetched_at.timestamp())

    def _due(self, entry: _Entry, now: float, share: float) -> tuple[bool, bool]:
        """Which halves are at least ``share`` of their TTL old."""
        return (now - entry.static_at >= self.policy.static_ttl_s * share,
                now - entry.dynamic_at >= self.policy.dynamic_ttl_s * share)

    def _serve(self, slug: str, entry: _Entry, now: float) -> VenueData | None:
        """The entry's data if it may be served now (refreshing in the background when due), else None."""
        static_age, dynamic_age = now - entry.static_at, now - entry.dynamic_at
        policy = self.policy
        if static_age < policy.static_ttl_s and dynamic_age < policy.dynamic_ttl_s:
            if (static_age >= policy.static_ttl_s * policy.refresh_ahead
                    or dynamic_age >= policy.dynamic_ttl_s * policy.refresh_ahead):
                self._refresh_in_background(slug, now, "refreshes_ahead")
            self._count("hits")
            return entry.data
        if max(static_age, dynamic_age) < policy.max_stale_s:
            # Stale-while-revalidate: answer now, refresh once in the background.
            self._refresh_in_background(slug, now, "revalidations")
            self._count("stale_served")
            return entry.data
        return None

    def _refresh_in_background(self, slug: str, now: float, counter: str) -> None:
        if slug in self._inflight:
            return
        failure = self._failures.get(slug)
        if failure is not None and now < failure.until:
            return  # backing off: keep serving what we have
        future, leader = self._claim(slug)
        if not leader:
            return
        self._count(counter)
        self._pool()
        assert self._refresher is not None  # _pool() made it
        try:
            self._refresher.submit(contextvars.copy_context().run, self._fetch_and_store, slug, future)
        except RuntimeError:  # pool shut down (process exiting): nothing to refresh for
            self._release(slug, future)
            future.set_result(None)

    def _claim(self, slug: str) -> tuple[Future, bool]:
        """The slug's fetch in flight, and whether the caller just became the one to run it."""
        with self._guard:
            future = self._inflight.get(slug)
            if future is not None:
                return future, False
            future = Future()
            self._inflight[slug] = future
            return future, True

    def _release(self, slug: str, future: Future) -> None:
        with self._guard:
            if self._inflight.get(slug) is future:
                del self._inflight[slug]

    def _fetch_and_store(self, slug: str, future: Future, fetch_event: str | None = None) -> None:
        """Fetch what is due for ``slug``, persist and keep it; outcome (data or error) goes to ``future``.

        ``fetch_event`` is counted only if a fetch really starts: a request that found nothing in
        memory may become the leader just after another request's fetch stored fresh data (CI saw
        it: two misses counted for one upstream fetch); that request had a hit.
        """
        try:
            now = self._clock()
            entry = self._mem.get(slug)
            static_due, dynamic_due = (True, True) if entry is None else \
                self._due(entry, now, self.policy.refresh_ahead)
            if not (static_due or dynamic_due):
                assert entry is not None  # a missing entry is always due
                if fetch_event is not None:
                    self._count("hits")
                future.set_result(entry.data)
                return
            if fetch_event is not None:
                self._count(fetch_event)
            try:
                data = self._refresh(slug, entry.data if entry else None, static_due, dynamic_due)
            except UpstreamNotFound:
                self._mem.pop(slug, None)
                self._remember_missing(slug, now)
                raise
            except UpstreamError as exc:
                self._record_failure(slug, exc, now, has_stale=entry is not None)
                raise
            self._failures.pop(slug, None)
            self._persist(data)
            self._mem[slug] = self._entry(data)
            future.set_result(data)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(exc)
        finally:
            self._release(slug, future)

    def _slow_get(self, slug: str) -> VenueData:
        """Nothing servable in memory: the database, then (waiting at most ``wait_s``) upstream."""
        missing_until = self._missing.get(slug)
        if missing_until is not None:
            if self._clock() < missing_until:
                self._count("missing_hits")
                raise venue_not_found(slug, "the venue API does not know it" if self.client else
                                      "no stored data and the venue API is off (offline mode)")
            self._missing.pop(slug, None)
        now = self._clock()
        entry = self._mem.get(slug)
        if entry is None:
            entry = self._load_stored_if_reachable(slug)
            if entry is not None and self.client is not None:
                served = self._serve(slug, entry, now)
                if served is not None:
                    return served
        if self.client is None:
            if entry is not None:
                self._count("hits")
                return entry.data
            self._remember_missing(slug, now)
            raise venue_not_found(slug, "no stored data and the venue API is off (offline mode)")
        failure = self._failures.get(slug)
        if failure is not None and now < failure.until:
            self._count("backoff_skips")
            return self._stale_or_raise(slug, entry, now, failure.error, failure.until)
        future, leader = self._claim(slug)
        if leader:
            self._fetch_and_store(slug, future, "refreshes" if entry else "misses")
        try:
            return future.result(timeout=self.policy.wait_s)
        except UpstreamNotFound as exc:
            raise venue_not_found(slug, "the venue API does not know it") from exc
        except FutureTimeout:
            raise UpstreamTimeout("venue-api did not answer in time", upstream="venue-api") from None
        except UpstreamError as exc:
            failure = self._failures.get(slug)
            return self._stale_or_raise(slug, entry, now, exc, failure.until if failure else now + 1)

    def _record_failure(self, slug: str, exc: UpstreamError, now: float, has_stale: bool) -> float:
        """Count and log a failed refresh; return when upstream may be tried again for this slug."""
        self._count("upstream_failures")
        failure = self._failures.get(slug)
        consecutive = failure.consecutive + 1 if failure is not None else 1
        until = now + self.policy.failure_backoff_s * min(2 ** (consecutive - 1), MAX_BACKOFF_FACTOR)
        self._remember(self._failures, slug, _Failure(until, exc, consecutive))
        log.warning("venue refresh failed", extra={"venue_slug": slug, "code": exc.code, "problem": exc.message,
                                                   "attempts": exc.attempts, "has_stale": has_stale})
        return until

    def _remember_missing(self, slug: str, now: float) -> None:
        self._remember(self._missing, slug, now + min(self.policy.dynamic_ttl_s, self.policy.failure_backoff_s))

    def _stale_or_raise(self, slug: str, entry: _Entry | None, now: float, error: UpstreamError,
                        until: float) -> VenueData:
        if entry is not None and now - min(entry.static_at, entry.dynamic_at) < self.policy.max_stale_s:
            self._count("stale_served")
            return entry.data
        if isinstance(error, UpstreamUnavailable):
            # Tell the client when we will try upstream again, not what upstream told us earlier.
            raise UpstreamUnavailable(error.message, upstream=error.upstream,
                                      retry_after=max(1, math.ceil(until - now)), details=error.details)
        raise error

    def _refresh(self, slug: str, old: VenueData | None, static_due: bool, dynamic_due: bool) -> VenueData:
        assert self.client is not None
        fetched_at = datetime.fromtimestamp(self._clock(), UTC)
        static = dynamic = None
        if static_due and dynamic_due:
            static, dynamic = self._fetch_both(slug)
        elif static_due:
            static = self.client.fetch_static(slug)
        else:
            dynamic = self.client.fetch_dynamic(slug)
        if old is None:
            assert static is not None and dynamic is not None  # nothing stored yet: both halves were due
            return VenueData(slug, static, fetched_at, dynamic, fetched_at)
        data = old
        if static is not None:
            data = replace(data, static=static, static_fetched_at=fetched_at)
        if dynamic is not None:
            data = replace(data, dynamic=dynamic, dynamic_fetched_at=fetched_at)
        return data

    def _fetch_both(self, slug: str):
        """Both halves in parallel: static in the fetch pool, dynamic in this thread."""
        assert self.client is not None
        static_future = self._pool().submit(contextvars.copy_context().run, self.client.fetch_static, slug)
        dynamic, dynamic_error = None, None
        try:
            dynamic = self.client.fetch_dynamic(slug)
        except UpstreamError as exc:
            dynamic_error = exc
        try:
            # Bounded: a queue of hung fetches in the pool must not hold this thread past its budget.
            static = static_future.result(timeout=self.policy.wait_s)
        except FutureTimeout:
            static_future.cancel()
            raise UpstreamTimeout("venue-api did not answer in time", upstream="venue-api") from None
        except UpstreamError as exc:
            if not isinstance(dynamic_error, UpstreamNotFound):
                raise
            raise dynamic_error from exc
        if dynamic_error is not None:
            raise dynamic_error
        return static, dynamic

    def _fetch_uncached(self, slug: str) -> VenueData:
        self._count("misses")
        return self.fetch_fresh(slug)

    def _load_stored(self, slug: str) -> _Entry | None:
        with self._sessions() as session:
            data = load_venue(session, slug)
        if data is None:
            return None
        self._count("db_loads")
        # setdefault: a refresh that finished meanwhile holds newer data than the database read
        return self._mem.setdefault(slug, self._entry(data))

    def _load_stored_if_reachable(self, slug: str) -> _Entry | None:
        """The stored venue; None when the database cannot be read but the venue API can answer, so a
        cold price degrades like a warm one (it used to answer 503 although the upstream was up)."""
        try:
            entry = self._load_stored(slug)
        except Exception as exc:
            if self.client is None:
                raise  # offline: the database is all there is
            self._count("db_read_failures")
            self._database_trouble("could not read stored venue data; asking the venue API", slug, exc)
            return None
        self._database_down = False
        return entry

    def _persist(self, data: VenueData) -> None:
        try:
            with self._sessions() as session, session.begin():
                upsert_venue(session, data)
        except Exception as exc:  # noqa: BLE001 - a failed write must not fail a price that we could compute
            self._count("persist_failures")
            self._database_trouble("could not persist venue data; serving it from memory", data.slug, exc)
            return
        self._database_down = False

    def _database_trouble(self, message: str, slug: str, exc: BaseException) -> None:
        if self._database_down:
            return
        self._database_down = True
        log.warning(message + " (logged once until the database works again; counted in "
                    "courier_venue_cache_events_total)", extra={"venue_slug": slug,
                                                                "error": f"{type(exc).__name__}: {exc}"[:300]})
