"""Client of the upstream venue API (``/venues/<slug>/static`` and ``/venues/<slug>/dynamic``)."""

from __future__ import annotations

from urllib.parse import quote

from services.http.policy import HttpPolicy
from services.http.sync import HttpClient
from services.pricing.venue_data import DynamicVenue, StaticVenue, VenueDataError, parse_dynamic, parse_static

UPSTREAM = "venue-api"


def venue_api_policy(connect_timeout_s: float, read_timeout_s: float, retries: int, deadline_s: float,
                     pool_maxsize: int, max_answer_bytes: int = 1024 * 1024) -> HttpPolicy:
    """Policy for an interactive price request.

    - retries (default 5): at 20% independent 429s, a half still failing after 6 attempts has
      probability 0.2^6 = 6e-5; with 3 retries it would be 1.6e-3 per half, about 1 request in 300.
      The public peers fail 20-35% of requests at 20% upstream 429s because they do not retry.
    - connect retries 1: a refused connection or a failed DNS lookup is rarely fixed 100 ms later;
      measured offline, 5 connect retries made each stale-serving refresh cost 1.3 s instead of 0.1 s.
    - backoff 50 ms x 2^n with up to 50 ms jitter: short, since a client is waiting, and jittered
      so our workers do not retry in lock-step.
    - Retry-After capped at 0.2 s: we honour the upstream's wish to wait, but a sync worker that
      sleeps is a worker that serves nobody; measured at 20% 429s with Retry-After 1, a 0.5 s cap
      gave 9 req/s on the cache-off path.  The deadline (default 2.5 s) bounds the whole call.
    """
    return HttpPolicy(connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s, retries=retries,
                      connect_retries=1,
                      backoff_factor_s=0.05, backoff_jitter_s=0.05, backoff_max_s=0.5, retry_after_max_s=0.2,
                      deadline_s=deadline_s, retry_post=False, pool_maxsize=pool_maxsize,
                      max_answer_bytes=max_answer_bytes)


class VenueApiClient:
    def __init__(self, base_url: str, policy: HttpPolicy) -> None:
        self.http = HttpClient(UPSTREAM, base_url, policy)

    @property
    def base_url(self) -> str:
        return self.http.base_url

    def _fetch(self, slug: str, half: str, parse):
        def usable(doc):
            try:
                return parse(doc)
            except VenueDataError as exc:
                raise ValueError(f"unusable {half} data for {slug!r}: {exc}") from exc

        # The slug is validated by the caller; quoting is belt and braces against path tricks.
        return self.http.get_json(f"/venues/{quote(slug, safe='')}/{half}", parse=usable)

    def fetch_static(self, slug: str) -> StaticVenue:
        return self._fetch(slug, "static", parse_static)

    def fetch_dynamic(self, slug: str) -> DynamicVenue:
        return self._fetch(slug, "dynamic", parse_dynamic)

    def close(self) -> None:
        self.http.close()
