"""Venue data for pricing: per-process memory, then the database, then the upstream venue API.

A warm request is a dict lookup and two float comparisons: no network, no database.  Past a
half's TTL the half is refreshed from upstream (both halves in parallel when both are due).
If the refresh fails, the last good data is served while younger than ``max_stale_s``
(stale-if-error), the failure is logged and counted, and the slug is not tried upstream again
for ``failure_backoff_s``: one flaky venue cannot turn every request into a slow retry loop.

The store owns its short database transactions: it persists what it fetched as a side effect
of a read request, and that must not depend on the outcome of the request's own unit of work.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.orm import sessionmaker

from services.errors import NotFound, UpstreamError, UpstreamNotFound, UpstreamUnavailable
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
    # and is answered at once, so steady traffic never waits on upstream; data past its TTL is still
    # refreshed before it is served (never older than the TTL while upstream answers).
    refresh_ahead: float = 0.8


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
LOCK_STRIPES = 64
# Per-slug failure and not-found records kept at most; past it, expired ones go first, then the
# oldest.  Forgetting one costs at most one extra upstream attempt for that slug.
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
        self._ahead: dict[str, Future] = {}  # background refreshes in flight, one per slug
        # Striped locks: a fixed number, shared by slugs with the same hash.  A lock per slug grew
        # with every distinct slug ever asked for (random slugs grew workers without bound), and an
        # evicting lock map could drop a lock in use.
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._locks_guard = threading.Lock()
        # Two pools on purpose: background refreshes wait on half-fetches, so they must never run in
        # the pool that executes those fetches (all 8 threads as refreshes waiting on fetches queued
        # behind them was a deadlock).
        self._executor: ThreadPoolExecutor | None = None
        self._refresher: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self.stats: Counter[str] = Counter()

    # -- public ---------------------------------------------------------------------------------
    def get(self, slug: str) -> VenueData:
        if not self.policy.enabled:
            return self._fetch_uncached(slug)
        entry = self._mem.get(slug)
        if entry is not None:
            if self.client is None:
                self.stats["hits"] += 1
                return entry.data
            now = self._clock()
            static_age, dynamic_age = now - entry.static_at, now - entry.dynamic_at
            policy = self.policy
            if static_age < policy.static_ttl_s and dynamic_age < policy.dynamic_ttl_s:
                if (static_age >= policy.static_ttl_s * policy.refresh_ahead
                        or dynamic_age >= policy.dynamic_ttl_s * policy.refresh_ahead):
                    self._refresh_ahead(slug, now)
                self.stats["hits"] += 1
                return entry.data
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

    def _refresh_ahead(self, slug: str, now: float) -> None:
        if slug in self._ahead:
            return
        failure = self._failures.get(slug)
        if failure is not None and now < failure.until:
            return
        with self._locks_guard:
            if slug in self._ahead:
                return
            self._pool()
            self._ahead[slug] = self._refresher.submit(self._background_refresh, slug)

    def _background_refresh(self, slug: str) -> None:
        try:
            with self._lock_for(slug):
                entry = self._mem.get(slug)
                if entry is None:
                    return
                now = self._clock()
                policy = self.policy
                static_due = now - entry.static_at >= policy.static_ttl_s * policy.refresh_ahead
                dynamic_due = now - entry.dynamic_at >= policy.dynamic_ttl_s * policy.refresh_ahead
                if not (static_due or dynamic_due):
                    return
                self.stats["refreshes_ahead"] += 1
                try:
                    data = self._refresh(slug, entry.data, static_due, dynamic_due)
                except UpstreamError as exc:
                    # Not fatal: the data is still fresh. Back off; past the TTL, stale-if-error applies.
                    self._record_failure(slug, exc, now, has_stale=True)
                    return
                self._failures.pop(slug, None)
                self._persist(data)
                self._mem[slug] = self._entry(data)
        finally:
            self._ahead.pop(slug, None)

    def wait_for_refreshes(self, timeout: float = 5.0) -> None:
        """Block until background refreshes started so far are done (tests, shutdown)."""
        for future in list(self._ahead.values()):
            future.result(timeout=timeout)

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
            self._refresher.shutdown(wait=False, cancel_futures=True)
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._refresher = None
        if self.client is not None:
            self.client.close()

    # -- internals ------------------------------------------------------------------------------
    def _lock_for(self, slug: str) -> threading.Lock:
        return self._locks[hash(slug) % LOCK_STRIPES]

    def _pool(self) -> ThreadPoolExecutor:
        """The fetch pool (and, built with it, the refresh pool)."""
        # Threads do not survive fork: build the pools in the process that uses them.
        if self._executor is None or self._executor_pid != os.getpid():
            with self._locks_guard:
                if self._executor is None or self._executor_pid != os.getpid():
                    self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="venue-fetch")
                    self._refresher = ThreadPoolExecutor(max_workers=4, thread_name_prefix="venue-refresh")
                    self._executor_pid = os.getpid()
        return self._executor

    def _prune(self, records: dict, now: float, until_of: Callable) -> None:
        """Keep ``records`` under MAX_SLUG_RECORDS: expired entries first, then the oldest."""
        if len(records) < MAX_SLUG_RECORDS:
            return
        for slug in [k for k, v in list(records.items()) if until_of(v) <= now]:
            records.pop(slug, None)
        while len(records) >= MAX_SLUG_RECORDS:
            records.pop(next(iter(records)), None)

    def _entry(self, data: VenueData) -> _Entry:
        return _Entry(data, data.static_fetched_at.timestamp(), data.dynamic_fetched_at.timestamp())

    def _slow_get(self, slug: str) -> VenueData:
        missing_until = self._missing.get(slug)
        if missing_until is not None:
            if self._clock() < missing_until:
                self.stats["missing_hits"] += 1
                raise venue_not_found(slug, "the venue API does not know it" if self.client else
                                      "no stored data and the venue API is off (offline mode)")
            self._missing.pop(slug, None)
        with self._lock_for(slug):
            now = self._clock()
            entry = self._mem.get(slug)
            if entry is None:
                entry = self._load_stored(slug)
            if entry is not None and self.client is None:
                self.stats["hits"] += 1
                return entry.data
            if self.client is None:
                self._remember_missing(slug, now)
                raise venue_not_found(slug, "no stored data and the venue API is off (offline mode)")
            static_due = entry is None or now - entry.static_at >= self.policy.static_ttl_s
            dynamic_due = entry is None or now - entry.dynamic_at >= self.policy.dynamic_ttl_s
            if not (static_due or dynamic_due):
                self.stats["hits"] += 1
                return entry.data
            failure = self._failures.get(slug)
            if failure is not None and now < failure.until:
                self.stats["backoff_skips"] += 1
                return self._stale_or_raise(slug, entry, now, failure.error, failure.until)
            self.stats["refreshes" if entry else "misses"] += 1
            try:
                data = self._refresh(slug, entry.data if entry else None, static_due, dynamic_due)
            except UpstreamNotFound as exc:
                self._mem.pop(slug, None)
                self._remember_missing(slug, now)
                raise venue_not_found(slug, "the venue API does not know it") from exc
            except UpstreamError as exc:
                until = self._record_failure(slug, exc, now, has_stale=entry is not None)
                return self._stale_or_raise(slug, entry, now, exc, until)
            self._failures.pop(slug, None)
            self._persist(data)
            self._mem[slug] = self._entry(data)
            return data

    def _record_failure(self, slug: str, exc: UpstreamError, now: float, has_stale: bool) -> float:
        """Count and log a failed refresh; return when upstream may be tried again for this slug."""
        self.stats["upstream_failures"] += 1
        failure = self._failures.get(slug)
        consecutive = failure.consecutive + 1 if failure is not None else 1
        until = now + self.policy.failure_backoff_s * min(2 ** (consecutive - 1), MAX_BACKOFF_FACTOR)
        self._prune(self._failures, now, lambda f: f.until)
        self._failures.pop(slug, None)  # re-inserted last: the newest record
        self._failures[slug] = _Failure(until, exc, consecutive)
        log.warning("venue refresh failed", extra={"venue_slug": slug, "code": exc.code, "problem": exc.message,
                                                   "has_stale": has_stale})
        return until

    def _remember_missing(self, slug: str, now: float) -> None:
        self._prune(self._missing, now, lambda until: until)  # random slugs cannot grow it forever
        self._missing[slug] = now + min(self.policy.dynamic_ttl_s, self.policy.failure_backoff_s)

    def _stale_or_raise(self, slug: str, entry: _Entry | None, now: float, error: UpstreamError,
                        until: float) -> VenueData:
        if entry is not None and now - min(entry.static_at, entry.dynamic_at) < self.policy.max_stale_s:
            self.stats["stale_served"] += 1
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
            return VenueData(slug, static, fetched_at, dynamic, fetched_at)
        data = old
        if static is not None:
            data = replace(data, static=static, static_fetched_at=fetched_at)
        if dynamic is not None:
            data = replace(data, dynamic=dynamic, dynamic_fetched_at=fetched_at)
        return data

    def _fetch_both(self, slug: str):
        pool = self._pool()
        futures: list[Future] = [pool.submit(self.client.fetch_static, slug), pool.submit(self.client.fetch_dynamic, slug)]
        errors = [f.exception() for f in futures]
        not_found = next((e for e in errors if isinstance(e, UpstreamNotFound)), None)
        if not_found is not None:
            raise not_found
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return futures[0].result(), futures[1].result()

    def _fetch_uncached(self, slug: str) -> VenueData:
        self.stats["misses"] += 1
        return self.fetch_fresh(slug)

    def _load_stored(self, slug: str) -> _Entry | None:
        with self._sessions() as session:
            data = load_venue(session, slug)
        if data is None:
            return None
        self.stats["db_loads"] += 1
        entry = self._entry(data)
        self._mem[slug] = entry
        return entry

    def _persist(self, data: VenueData) -> None:
        try:
            with self._sessions() as session, session.begin():
                upsert_venue(session, data)
        except Exception:  # noqa: BLE001 - a failed write must not fail a price that we could compute
            self.stats["persist_failures"] += 1
            log.exception("could not persist venue data", extra={"venue_slug": data.slug})
