"""Venue data cache: memory, database, upstream; TTLs, stale-if-error, backoff, offline mode."""

import pytest
import responses

from services.errors import NotFound, UpstreamInvalid, UpstreamTimeout, UpstreamUnavailable
from services.pricing.venue_api import VenueApiClient, venue_api_policy
from services.pricing.venue_store import VenueCachePolicy, VenueStore
from tests.pricing_fixtures import doc, register_venue

BASE = "http://venue-api.test/v1"
SLUG = "home-assignment-venue-helsinki"
POLICY = VenueCachePolicy(static_ttl_s=3600, dynamic_ttl_s=60, max_stale_s=86400, failure_backoff_s=5)


class Clock:
    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


def make_store(app, clock, policy=POLICY, online=True, retries=1):
    client = VenueApiClient(BASE, venue_api_policy(0.2, 0.5, retries, 2.0, 4)) if online else None
    return VenueStore(client, app.extensions["courier"].session_factory, policy, clock=clock)


def test_miss_fetches_both_halves_then_serves_from_memory(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    store = make_store(app, clock)
    first = store.get(SLUG)
    assert (first.static.latitude, first.dynamic.base_price) == (60.17012143, 190)
    assert len(mock.calls) == 2
    clock.now += 40  # fresh and not yet in the refresh-ahead window (last 20% of the 60 s TTL)
    assert store.get(SLUG) is first
    assert len(mock.calls) == 2  # warm: no network
    assert store.stats["hits"] == 1


def test_fetched_data_is_persisted_for_other_workers(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    make_store(app, clock).get(SLUG)
    other_worker = make_store(app, clock)
    assert other_worker.get(SLUG).dynamic.base_price == 190
    assert len(mock.calls) == 2 and other_worker.stats["db_loads"] == 1


def test_past_its_ttl_the_dynamic_half_is_served_at_once_and_refreshed_in_the_background(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    store = make_store(app, clock)
    store.get(SLUG)
    changed = doc("helsinki", "dynamic")
    changed["venue_raw"]["delivery_specs"]["delivery_pricing"]["base_price"] = 250
    mock.replace(responses.GET, f"{BASE}/venues/{SLUG}/dynamic", json=changed)
    clock.now += 60
    assert store.get(SLUG).dynamic.base_price == 190  # stale-while-revalidate
    store.wait_for_refreshes()
    assert store.get(SLUG).dynamic.base_price == 250
    assert store.stats["stale_served"] == 1 and store.stats["revalidations"] == 1
    assert [c.request.url.rsplit("/", 1)[1] for c in mock.calls][2:] == ["dynamic"]


def test_static_half_refreshes_after_its_ttl(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    store = make_store(app, clock, VenueCachePolicy(static_ttl_s=100, dynamic_ttl_s=1000))
    store.get(SLUG)
    clock.now += 100
    store.get(SLUG)
    store.wait_for_refreshes()
    assert [c.request.url.rsplit("/", 1)[1] for c in mock.calls][2:] == ["static"]


def test_stale_data_is_served_when_refresh_fails_and_failure_is_counted(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    store = make_store(app, clock)
    good = store.get(SLUG)
    mock.replace(responses.GET, f"{BASE}/venues/{SLUG}/dynamic", status=503)
    clock.now += 61
    assert store.get(SLUG) == good
    store.wait_for_refreshes()
    assert store.get(SLUG) == good
    assert store.stats["upstream_failures"] == 1 and store.stats["stale_served"] == 2


def test_backoff_after_failure_means_no_upstream_call(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    store = make_store(app, clock)
    store.get(SLUG)
    mock.replace(responses.GET, f"{BASE}/venues/{SLUG}/dynamic", status=503)
    clock.now += 61
    store.get(SLUG)
    store.wait_for_refreshes()
    calls = len(mock.calls)
    clock.now += 4  # within the 5 s backoff
    store.get(SLUG)
    store.wait_for_refreshes()
    assert len(mock.calls) == calls and store.stats["revalidations"] == 1
    clock.now += 2  # backoff over: try again
    store.get(SLUG)
    store.wait_for_refreshes()
    assert len(mock.calls) > calls


def test_consecutive_failures_double_the_backoff(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    store = make_store(app, clock)
    store.get(SLUG)
    mock.replace(responses.GET, f"{BASE}/venues/{SLUG}/dynamic", status=503)
    clock.now += 61
    store.get(SLUG)  # failure 1: 5 s
    store.wait_for_refreshes()
    clock.now += 5
    store.get(SLUG)  # failure 2: 10 s
    store.wait_for_refreshes()
    calls = len(mock.calls)
    clock.now += 9
    store.get(SLUG)
    store.wait_for_refreshes()
    assert len(mock.calls) == calls
    clock.now += 1
    store.get(SLUG)
    store.wait_for_refreshes()
    assert len(mock.calls) > calls


def test_too_stale_data_is_not_served(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    store = make_store(app, clock, VenueCachePolicy(static_ttl_s=3600, dynamic_ttl_s=60, max_stale_s=300))
    store.get(SLUG)
    mock.replace(responses.GET, f"{BASE}/venues/{SLUG}/dynamic", status=503)
    clock.now += 301
    with pytest.raises(UpstreamUnavailable) as info:
        store.get(SLUG)
    assert int(info.value.headers["Retry-After"]) >= 1


def test_no_data_and_upstream_down_is_503_with_retry_after(app, clock, mock):
    mock.get(f"{BASE}/venues/{SLUG}/static", status=503)
    mock.get(f"{BASE}/venues/{SLUG}/dynamic", status=503)
    with pytest.raises(UpstreamUnavailable) as info:
        make_store(app, clock).get(SLUG)
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "5"


def test_timeout_is_504(app, clock, mock):
    import requests

    mock.get(f"{BASE}/venues/{SLUG}/static", body=requests.exceptions.ReadTimeout())
    mock.get(f"{BASE}/venues/{SLUG}/dynamic", json=doc("helsinki", "dynamic"))
    with pytest.raises(UpstreamTimeout):
        make_store(app, clock).get(SLUG)


def test_upstream_404_is_venue_not_found(app, clock, mock):
    mock.get(f"{BASE}/venues/nowhere/static", status=404, json={"detail": "no"})
    mock.get(f"{BASE}/venues/nowhere/dynamic", status=404, json={"detail": "no"})
    with pytest.raises(NotFound) as info:
        make_store(app, clock).get("nowhere")
    assert info.value.code == "venue_not_found"


def test_invalid_ranges_from_upstream_are_502(app, clock, mock):
    bad = doc("helsinki", "dynamic")
    bad["venue_raw"]["delivery_specs"]["delivery_pricing"]["distance_ranges"][1]["min"] = 600
    mock.get(f"{BASE}/venues/{SLUG}/static", json=doc("helsinki", "static"))
    mock.get(f"{BASE}/venues/{SLUG}/dynamic", json=bad)
    with pytest.raises(UpstreamInvalid, match="not contiguous"):
        make_store(app, clock).get(SLUG)


def test_offline_serves_stored_data_regardless_of_age(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    make_store(app, clock).get(SLUG)  # stored by an online worker
    clock.now += 10 * 86400
    offline = make_store(app, clock, online=False)
    assert offline.get(SLUG).dynamic.base_price == 190
    with pytest.raises(NotFound, match="offline"):
        offline.get("home-assignment-venue-unknown")


def test_cache_off_fetches_every_time(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    store = make_store(app, clock, VenueCachePolicy(enabled=False))
    store.get(SLUG)
    store.get(SLUG)
    assert len(mock.calls) == 4


def test_slug_is_url_quoted(app, clock, mock):
    mock.get(f"{BASE}/venues/a%20b/static", status=404)
    mock.get(f"{BASE}/venues/a%20b/dynamic", status=404)
    with pytest.raises(NotFound):
        make_store(app, clock).get("a b")


def test_unknown_slug_is_remembered_briefly(app, clock, mock):
    mock.get(f"{BASE}/venues/nowhere/static", status=404)
    mock.get(f"{BASE}/venues/nowhere/dynamic", status=404)
    store = make_store(app, clock)
    for _ in range(3):
        with pytest.raises(NotFound):
            store.get("nowhere")
    assert len(mock.calls) == 2 and store.stats["missing_hits"] == 2
    clock.now += 5  # min(dynamic TTL, failure backoff)
    with pytest.raises(NotFound):
        store.get("nowhere")
    assert len(mock.calls) == 4


def test_offline_unknown_slug_is_not_read_from_the_database_each_time(app, clock):
    store = make_store(app, clock, online=False)
    for _ in range(3):
        with pytest.raises(NotFound):
            store.get("nowhere")
    assert store.stats["missing_hits"] == 2


def test_refresh_ahead_answers_at_once_and_refreshes_in_the_background(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    store = make_store(app, clock)
    first = store.get(SLUG)
    changed = doc("helsinki", "dynamic")
    changed["venue_raw"]["delivery_specs"]["delivery_pricing"]["base_price"] = 250
    mock.replace(responses.GET, f"{BASE}/venues/{SLUG}/dynamic", json=changed)
    clock.now += 50  # in the last 20% of the dynamic TTL
    assert store.get(SLUG) is first  # answered with the current (still fresh) data
    store.wait_for_refreshes()
    assert store.get(SLUG).dynamic.base_price == 250
    assert [c.request.url.rsplit("/", 1)[1] for c in mock.calls][2:] == ["dynamic"]
    assert store.stats["refreshes_ahead"] == 1


def test_failed_refresh_ahead_backs_off_and_keeps_serving(app, clock, mock):
    register_venue(mock, BASE, "helsinki")
    store = make_store(app, clock, VenueCachePolicy(dynamic_ttl_s=60, failure_backoff_s=30))
    first = store.get(SLUG)
    mock.replace(responses.GET, f"{BASE}/venues/{SLUG}/dynamic", status=503)
    clock.now += 50
    assert store.get(SLUG) is first
    store.wait_for_refreshes()
    calls = len(mock.calls)
    clock.now += 11  # past the TTL, within the 30 s failure backoff: stale-if-error, no upstream call
    assert store.get(SLUG) == first
    assert len(mock.calls) == calls and store.stats["upstream_failures"] == 1


def test_refresh_ahead_storm_with_a_slow_upstream_does_not_deadlock(app, clock):
    """10 venues due at once, upstream 0.3 s per call: refreshes wait on fetches, never in one pool."""
    import json
    import re
    import threading
    import time

    delay = {"s": 0.0}  # fast while the store warms up, then 0.3 s per call

    def slow(half):
        def answer(request):
            time.sleep(delay["s"])
            return 200, {}, json.dumps(doc("helsinki", half))
        return answer

    policy = VenueCachePolicy(static_ttl_s=4, dynamic_ttl_s=4, max_stale_s=86400, failure_backoff_s=5)
    slugs = [f"venue-{i}" for i in range(10)]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for half in ("static", "dynamic"):
            mock.add_callback(responses.GET, re.compile(rf"{BASE}/venues/[^/]+/{half}"), callback=slow(half))
        store = make_store(app, clock, policy)
        for slug in slugs:
            store.get(slug)
        delay["s"] = 0.3
        clock.now += 3.5  # every venue in the refresh-ahead window, both halves due
        answered = threading.Event()

        def requests_for_all():
            for slug in slugs:
                store.get(slug)
            answered.set()

        threading.Thread(target=requests_for_all, daemon=True).start()
        assert answered.wait(2.5), "requests waited on background refreshes"
        store.wait_for_refreshes(timeout=10)  # raises TimeoutError on a deadlock instead of hanging
        assert store.stats["refreshes_ahead"] == 10
        store.close()



class GatedClient:
    """A venue API client whose fetches wait for ``gate`` (a hanging upstream, released by the test)."""

    def __init__(self, data):
        import threading

        self.data = data
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.asked: list[str] = []  # list.append is atomic; "+= 1" from two threads could lose one

    @property
    def calls(self):
        return len(self.asked)

    def _wait(self):
        self.asked.append("half")
        self.started.release()
        assert self.gate.wait(10), "the test never released the upstream"

    def fetch_static(self, slug):
        self._wait()
        return self.data.static

    def fetch_dynamic(self, slug):
        self._wait()
        return self.data.dynamic

    def close(self):
        pass


def gated_store(app, clock, policy=POLICY):
    from datetime import UTC, datetime

    from services.pricing.venue_data import DynamicVenue, StaticVenue, VenueData

    now = datetime.fromtimestamp(clock.now, UTC)
    data = VenueData(SLUG, StaticVenue(60.17, 24.93), now, DynamicVenue(1000, 190, ()), now)
    client = GatedClient(data)
    return VenueStore(client, app.extensions["courier"].session_factory, policy, clock=clock), client, data


def test_stale_data_is_served_at_once_while_the_upstream_hangs(app, clock):
    store, client, data = gated_store(app, clock)
    store._mem[SLUG] = store._entry(data)  # warm
    clock.now += 120  # past the dynamic TTL
    assert store.get(SLUG) is data  # answered although the refresh it started is still hanging
    assert client.started.acquire(timeout=5)  # the background refresh did reach upstream
    assert store.get(SLUG) is data and client.calls == 1  # one refresh at a time, not one per request
    client.gate.set()
    store.wait_for_refreshes()
    assert store.stats["stale_served"] == 2 and store.stats["revalidations"] == 1
    store.close()


def test_concurrent_cold_requests_share_one_upstream_fetch(app, clock):
    import threading

    store, client, data = gated_store(app, clock)
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.get(SLUG))) for _ in range(4)]
    for t in threads:
        t.start()
    assert client.started.acquire(timeout=5) and client.started.acquire(timeout=5)  # both halves asked once
    client.gate.set()
    for t in threads:
        t.join(5)
    assert len(results) == 4 and all(r.dynamic.base_price == 190 for r in results)
    assert client.calls == 2 and store.stats["misses"] == 1
    store.close()


class FetchWhileReading:
    """Sessions whose first use ends with another request fetching the venue (a race, made exact)."""

    def __init__(self, sessions, other_request):
        self.sessions, self.other_request, self.raced = sessions, other_request, False

    def __call__(self):
        from contextlib import contextmanager

        @contextmanager
        def session():
            with self.sessions() as inner:
                yield inner
            if not self.raced:
                self.raced = True
                self.other_request()  # its fetch completes after our read found nothing stored

        return session()


def test_a_request_that_finds_the_venue_fetched_meanwhile_counts_a_hit_not_a_miss(app, clock):
    store, client, _ = gated_store(app, clock)
    client.gate.set()
    store._sessions = FetchWhileReading(store._sessions, lambda: store.get(SLUG))
    assert store.get(SLUG).dynamic.base_price == 190
    assert client.calls == 2  # one fetch of both halves, by the other request
    assert (store.stats["misses"], store.stats["hits"]) == (1, 1)
    store.close()


def test_a_request_waits_for_another_requests_fetch_no_longer_than_its_budget(app, clock):
    import threading

    policy = VenueCachePolicy(wait_s=0.2)
    store, client, _ = gated_store(app, clock, policy)
    leader = threading.Thread(target=lambda: store.get(SLUG), daemon=True)
    leader.start()
    assert client.started.acquire(timeout=5)
    with pytest.raises(UpstreamTimeout):
        store.get(SLUG)  # the leader's fetch hangs; this request gives up after wait_s
    client.gate.set()
    leader.join(5)
    store.close()


class NoRows:
    """A session factory whose database holds no venue (what an unknown slug meets)."""

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get(self, model, key):
        return None


class UnknownToUpstream:
    def fetch_static(self, slug):
        from services.errors import UpstreamNotFound
        raise UpstreamNotFound("venue-api has no such resource", upstream="venue-api")

    fetch_dynamic = fetch_static

    def close(self):
        pass


def test_a_flood_of_distinct_unknown_slugs_keeps_memory_flat(clock):
    """100k distinct slugs in offline mode (the cheapest flood to send: no upstream call each)."""
    import tracemalloc

    from services.pricing.venue_store import MAX_SLUG_RECORDS

    store = VenueStore(None, NoRows(), POLICY, clock=clock)
    refused = []

    def flood(start, count):
        for i in range(start, start + count):
            try:
                store.get(f"random-slug-{i:08d}")
            except NotFound:
                refused.append(1)

    tracemalloc.start()
    flood(0, 20_000)  # past MAX_SLUG_RECORDS: the records are at their bound from here on
    at_20k = tracemalloc.get_traced_memory()[0]
    flood(20_000, 80_000)
    at_100k = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(refused) == 100_000
    assert len(store._missing) <= MAX_SLUG_RECORDS and not store._failures and not store._inflight
    assert not store._mem
    # 80k more slugs unbounded would be ~8 MB more of records (~100 bytes each); bounded, it stays put
    # (the list of refusals above is the test's own, ~0.7 MB).
    assert at_100k - at_20k < 1_500_000, f"memory grew by {at_100k - at_20k} bytes over 80k more slugs"
    store.close()


def test_slugs_the_upstream_does_not_know_are_remembered_within_the_same_bound(clock):
    from services.pricing.venue_store import MAX_SLUG_RECORDS

    store = VenueStore(UnknownToUpstream(), NoRows(), POLICY, clock=clock)
    for i in range(MAX_SLUG_RECORDS * 3 // 2):
        with pytest.raises(NotFound):
            store.get(f"random-slug-{i:08d}")
    assert MAX_SLUG_RECORDS * 9 // 10 <= len(store._missing) <= MAX_SLUG_RECORDS
    assert not store._inflight and not store._failures and not store._mem
    with pytest.raises(NotFound):  # the newest are still remembered: no upstream call for them
        store.get(f"random-slug-{MAX_SLUG_RECORDS * 3 // 2 - 1:08d}")
    assert store.stats["missing_hits"] == 1
    store.close()


def test_a_cold_price_with_the_database_down_is_served_from_the_upstream_and_logged_once(app, clock, mock, caplog):
    """The upstream answered: the price is computed and served; storing is skipped (it used to be 503)."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    down = sessionmaker(create_engine("sqlite:////nonexistent-folder/x.db"))  # every use fails to connect
    client = VenueApiClient(BASE, venue_api_policy(0.2, 0.5, 1, 2.0, 4))
    store = VenueStore(client, down, POLICY, clock=clock)
    register_venue(mock, BASE, "helsinki")
    register_venue(mock, BASE, "stockholm")
    with caplog.at_level("WARNING", logger="courier.pricing"):
        assert store.get(SLUG).dynamic.base_price == 190
        assert store.get("home-assignment-venue-stockholm").static is not None
    assert store.stats["db_read_failures"] == 2 and store.stats["persist_failures"] == 2
    assert len([r for r in caplog.records if r.name == "courier.pricing"]) == 1  # once, not per price


def test_offline_with_the_database_down_still_says_so(app, clock):
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import sessionmaker

    store = VenueStore(None, sessionmaker(create_engine("sqlite:////nonexistent-folder/x.db")), POLICY, clock=clock)
    with pytest.raises(OperationalError):
        store.get(SLUG)  # nothing else to serve from: the database error (503) stands


def test_two_workers_storing_the_same_new_venue_both_succeed(app):
    """Both found no row, then both wrote: the second write was a UNIQUE violation logged as ERROR."""
    from datetime import UTC, datetime

    from services.pricing.venue_data import DynamicVenue, StaticVenue, VenueData
    from services.pricing.venue_repo import load_venue, upsert_venue

    sessions = app.extensions["courier"].session_factory
    now = datetime.now(UTC)

    def data(base_price):
        return VenueData(slug="new-venue", static=StaticVenue(latitude=60.0, longitude=24.0), static_fetched_at=now,
                         dynamic=DynamicVenue(order_minimum_no_surcharge=1000, base_price=base_price,
                                              distance_ranges=()), dynamic_fetched_at=now)

    with sessions() as second, second.begin():
        assert upsert_venue(second, data(190)) is True  # worker 2 stores it...
    with sessions() as first, first.begin():
        # ...after worker 1 had looked and found nothing (the interleaving, made exact)
        first.get = lambda *args, **kwargs: None  # type: ignore[method-assign]
        assert upsert_venue(first, data(200)) is True  # its write updates instead of failing
    with sessions() as session:
        assert load_venue(session, "new-venue").dynamic.base_price == 200
