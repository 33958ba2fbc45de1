"""Every configuration key Courier reads, with its default and meaning, in one place.

Precedence (lowest to highest): these defaults, then ``COURIER_<KEY>`` environment
variables (parsed as JSON where they parse, so ``COURIER_VENUE_STATIC_TTL_S=30`` is the
int 30 and ``COURIER_VENUE_API_URL=`` is the empty string), then the mapping passed to
``create_app(config)``.  The README's configuration table is checked against this list
by a test, so a key added here without documentation fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent
DATA_DIR = PROJECT_ROOT / "data"


class ConfigError(Exception):
    """A setting's value cannot be used; the message names the variable, the value and what is accepted."""


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    # --- core -------------------------------------------------------------------------
    Setting("DATABASE_URL", None,
            "SQLAlchemy URL. Default: SQLite file `courier.db` in Flask's instance folder. "
            "PostgreSQL: `postgresql+psycopg://user:pass@host/db` (install the `postgres` extra)."),
    Setting("SQLITE_BUSY_TIMEOUT_MS", 5000,
            "How long a SQLite writer waits for another worker's lock before failing."),
    Setting("MAX_CONTENT_LENGTH", 1024 * 1024, "Largest accepted request body in bytes (larger: 413)."),
    Setting("LOG_LEVEL", "INFO", "Root log level."),
    Setting("ACCESS_LOG", True, "Emit one JSON log line per request (method, path, status, duration, request id)."),
    Setting("HTTP_POOL_MAXSIZE", 16, "Pooled connections kept per upstream host by each process."),
    Setting("OPEN_SCOPES", "pricing:read estimate:read ops:read docs:read",
            "Scopes open to every caller without an API key (space- or comma-separated). The others need a key "
            "with the scope (`flask api-keys create`): `runs:read` (offer runs), `offers:score` (real-time "
            "offers). Empty: every endpoint needs a key."),
    # --- pricing (DOPC) -----------------------------------------------------------------
    Setting("VENUE_API_URL", "https://consumer-api.development.dev.woltapi.com/home-assignment-api/v1",
            "Base URL of the upstream venue API. Empty string: offline, only stored venue data is used."),
    Setting("VENUE_API_CONNECT_TIMEOUT_S", 0.5, "Connect timeout of one venue API attempt."),
    Setting("VENUE_API_READ_TIMEOUT_S", 0.5,
            "Read timeout of one venue API attempt (each attempt is also cut to the time left before the deadline)."),
    Setting("VENUE_API_RETRIES", 5, "Retries of one venue API call (429, 5xx, connection errors)."),
    Setting("VENUE_API_DEADLINE_S", 2.5,
            "Total time budget of one venue lookup, retries and backoff included; no retry starts past it."),
    Setting("VENUE_STATIC_TTL_S", 3600, "Seconds a venue's static half (location) is fresh."),
    Setting("VENUE_DYNAMIC_TTL_S", 60, "Seconds a venue's dynamic half (minimum, prices, ranges) is fresh."),
    Setting("VENUE_MAX_STALE_S", 86400,
            "When a refresh fails, stored data younger than this is still served (stale-if-error)."),
    Setting("VENUE_FAILURE_BACKOFF_S", 5.0,
            "After an upstream failure for a slug, no new upstream attempt for it for this many seconds."),
    Setting("VENUE_CACHE_ENABLED", True,
            "Keep venue data in memory and the database. False: upstream on every request (benchmarks)."),
    Setting("PRICING_MAX_CART_VALUE", 100_000_000, "Largest accepted `cart_value` (smallest currency unit)."),
    # --- estimate -----------------------------------------------------------------------
    Setting("MODEL_PATH", str(DATA_DIR / "models" / "retrained.json"),
            "XGBoost JSON artifact used for delivery-time estimates."),
    Setting("ESTIMATE_UNKNOWN_VENUE", "default",
            "`default`: unknown venues use the median preparation time (venue_known false); `reject`: 404."),
    Setting("PREP_TIMES_RELOAD_S", 5.0,
            "How often (seconds) a worker checks the database for a changed preparation-time mapping."),
    # --- offers -------------------------------------------------------------------------
    Setting("PARTNERS_FILE", str(DATA_DIR / "partners.toml"), "TOML partner registry (see README)."),
    Setting("REFERENCE_PARTNER_ENABLED", True, "Serve the reference partner's ML endpoints."),
    Setting("REFERENCE_PARTNER_PREFIX", "/partners/reference", "URL prefix of the reference partner."),
    Setting("OFFERS_MAX_TRANSACTIONS", 10_000, "Most transactions accepted in one real-time offer request."),
    Setting("SERVICE_URL", None,
            "Address this service answers on, put where a partner's `base_url` says `{service}` (the bundled "
            "reference partner). Default: from `COURIER_BIND` (a wildcard host becomes 127.0.0.1), else "
            "`http://127.0.0.1:8000`."),
    Setting("OFFERS_MAX_CONSECUTIVE_FAILURES", 100,
            "`run-offers` stops (run `failed`, resumable) after this many members failed in a row; 0: never."),
    Setting("OFFERS_DEFAULT_PARTNER", "reference", "Partner used when a request or command names none."),
    Setting("OFFERS_REALTIME_DEADLINE_S", 5.0,
            "Time budget of each partner call of a real-time offer, retries included (at most 2 retries)."),
)

DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS}
