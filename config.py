"""Every configuration key Courier reads: its type, constraints, default and meaning, in one place.

Precedence (lowest to highest): these defaults, then ``COURIER_<KEY>`` environment variables,
then the mapping passed to ``create_app(config)``.  Every value is parsed and checked once, by
:func:`load_settings` at start-up, against its declaration: booleans accept
true/false/1/0/yes/no/on/off, numbers their range, choices their list.  A bad value stops
start-up (and every CLI command) with one :class:`ConfigError` naming the variable, the value and
what is accepted; nothing is cast at request time.  The README's configuration table is checked
against this list by a test, so a key added here without documentation fails the suite.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _project_root() -> Path:
    """Where alembic.ini, migrations/ and data/ are: the source tree (a checkout or an editable
    install), or ``<prefix>/share/courier`` where a non-editable ``pip install .`` puts them
    (setup.cfg's data_files)."""
    here = Path(__file__).resolve().parent
    if (here / "migrations").is_dir():
        return here
    shared = Path(sys.prefix) / "share" / "courier"
    return shared if shared.is_dir() else here


PROJECT_ROOT = _project_root()
DATA_DIR = PROJECT_ROOT / "data"


def default_database_folder() -> Path:
    """Where the SQLite database goes when no ``COURIER_DATABASE_URL`` is set.

    In a checkout (or an editable install): ``instance/`` beside the code, as Flask has it.
    Installed with ``pip install .``: the user's data folder, ``$XDG_DATA_HOME/courier`` (else
    ``~/.local/share/courier``), because Flask's instance folder for an installed app is
    ``<venv>/var/app-instance``: rebuilding the virtualenv would delete the data.
    """
    here = Path(__file__).resolve().parent
    if (here / "migrations").is_dir():
        return here / "instance"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "courier"


class ConfigError(Exception):
    """A setting's value cannot be used; the message names the variable, the value and what is accepted."""


FILE_SUFFIX = "_FILE"


def from_environment(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of variable ``name``, or the contents of the file named by ``<name>_FILE``.

    The Docker/Kubernetes secrets convention: a secret is mounted as a file (``/run/secrets/...``)
    rather than put in the environment, where ``docker inspect`` and every child process see it.
    One trailing newline (what ``echo`` and most editors add) is not part of the value. Setting both
    is refused (which one would win is a guess); an unreadable file is a :class:`ConfigError`.
    """
    environ = os.environ if environ is None else environ
    file_variable = name + FILE_SUFFIX
    if file_variable not in environ:
        return environ.get(name)
    if name in environ:
        raise ConfigError(f"both {name} and {file_variable} are set: set one of them")
    path = environ[file_variable]
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"{file_variable}={path!r}: cannot read the file ({reason})") from None
    return text[:-1] if text.endswith("\n") else text


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Setting:
    """One key: ``kind`` names its class in ``KINDS`` (bool, int, float, str, "choice", "url", "path",
    "database_url", "broker_url", "prefix", "bind"); bounds are inclusive."""

    key: str
    default: Any
    help: str
    kind: Any = str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False  # None / empty string allowed (means "derive it" or "off")
    above_zero: bool = False  # strictly positive (timeouts)
    secret: bool = False  # may hold a password: can also be read from the file named by COURIER_<KEY>_FILE

    @property
    def variable(self) -> str:
        return f"COURIER_{self.key}"

    def accepted(self) -> str:
        """What a value must be, in words (for error messages and the README)."""
        return KINDS[self.kind].accepted(self)

    def invalid(self, name: str, raw: Any, problem: ValueError) -> ConfigError:
        """The one-line error for a bad value: variable (or key), value, problem, what is accepted."""
        return ConfigError(f"{name}={raw!r} is not valid ({problem}): expected {self.accepted()}")

    def parse(self, value: Any) -> Any:
        """The typed value of ``value`` (a string from the environment, or a Python value); ValueError if bad."""
        if value is None or (isinstance(value, str) and value.strip() == "" and self.optional):
            if self.optional:
                return None if value is None or self.kind != "url" else ""
            raise ValueError("a value is required")
        return KINDS[self.kind].parse(self, value)


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def _or_empty(setting: Setting) -> str:
    return " (or empty)" if setting.optional else ""


class Text:
    """A kind of setting: how it reads a value (never None, nor an empty optional one: ``Setting.parse``
    answers those) and what it accepts, in words. This one: any text."""

    def accepted(self, setting: Setting) -> str:
        return "text"

    def parse(self, setting: Setting, value: Any) -> Any:
        text = str(value).strip()
        if not text and not setting.optional:
            raise ValueError("a value is required")
        return self.checked(text)

    def checked(self, text: str) -> str:
        return text


class Bool(Text):
    def accepted(self, setting: Setting) -> str:
        return "true/false (also 1/0, yes/no, on/off)"

    def parse(self, setting: Setting, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError("not a boolean")


class Number(Text):
    """A whole number (``int``) or any finite number (``float``), within the setting's bounds."""

    def __init__(self, whole: bool) -> None:
        self.whole = whole

    def accepted(self, setting: Setting) -> str:
        noun = "a whole number" if self.whole else "a number"
        if setting.above_zero:
            noun += " above 0"
        if setting.minimum is not None and setting.maximum is not None:
            return f"{noun} from {_num(setting.minimum)} to {_num(setting.maximum)}"
        if setting.minimum is not None:
            return f"{noun} of at least {_num(setting.minimum)}"
        if setting.maximum is not None:
            return f"{noun} up to {_num(setting.maximum)}"
        return noun

    def parse(self, setting: Setting, value: Any) -> float:
        number = self._whole(value) if self.whole else self._finite(value)
        if setting.above_zero and number <= 0:
            raise ValueError("must be above 0")
        if setting.minimum is not None and number < setting.minimum:
            raise ValueError(f"below {_num(setting.minimum)}")
        if setting.maximum is not None and number > setting.maximum:
            raise ValueError(f"above {_num(setting.maximum)}")
        return number

    @staticmethod
    def _whole(value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("not a whole number")
        try:
            return int(value) if not isinstance(value, str) else int(value.strip().replace("_", ""))
        except ValueError:
            raise ValueError("not a whole number") from None

    @staticmethod
    def _finite(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError("not a number") from None
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number


class Choice(Text):
    def accepted(self, setting: Setting) -> str:
        return "one of " + ", ".join(setting.choices)

    def parse(self, setting: Setting, value: Any) -> str:
        folded = {c.lower(): c for c in setting.choices}
        text = str(value).strip().lower()
        if text not in folded:
            raise ValueError("not one of the choices")
        return folded[text]


class Url(Text):
    def accepted(self, setting: Setting) -> str:
        return "an http:// or https:// URL" + _or_empty(setting)

    def parse(self, setting: Setting, value: Any) -> str:
        if not str(value).strip().startswith(("http://", "https://")):
            raise ValueError("not an http(s) URL")
        return super().parse(setting, value)


class FilePath(Text):
    def accepted(self, setting: Setting) -> str:
        return "a file path" + _or_empty(setting)


class DatabaseUrl(Text):
    def accepted(self, setting: Setting) -> str:
        return "a database URL (sqlite:///path, postgresql://user:pass@host/db)"

    def checked(self, text: str) -> str:
        # ``postgres://`` (what many hosts hand out) means PostgreSQL through psycopg, like ``postgresql://``.
        for short in ("postgres://", "postgresql://"):
            if text.startswith(short):
                return "postgresql+psycopg://" + text[len(short):]
        if "://" not in text:
            raise ValueError("not a database URL")
        return text


class BrokerUrl(Text):
    def accepted(self, setting: Setting) -> str:
        return "a broker URL (redis://host:6379/0, rediss://..., sentinel://...)" + _or_empty(setting)

    def checked(self, text: str) -> str:
        if "://" not in text:
            raise ValueError("not a broker URL")
        return text


class Prefix(Text):
    def accepted(self, setting: Setting) -> str:
        return "a URL path starting with /"

    def checked(self, text: str) -> str:
        if not text.startswith("/") or " " in text:
            raise ValueError("not a URL path")
        return text.rstrip("/") or "/"


class Bind(Text):
    """gunicorn's listening addresses. Checked here because gunicorn itself retried a bad one for
    seconds, printing three JSON errors, before giving up."""

    _HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+|)$")

    def accepted(self, setting: Setting) -> str:
        return "host:port, [ipv6]:port, unix:/path or fd://N (several separated by commas)"

    def checked(self, text: str) -> str:
        for part in (p.strip() for p in text.split(",")):
            if part.startswith("unix:") and len(part) > len("unix:"):
                continue
            if part.startswith("fd://") and part[len("fd://"):].isdigit():
                continue
            host, colon, port = part.rpartition(":")
            if not colon:
                host, port = part, "8000"  # gunicorn's default port
            if not port.isdigit() or int(port) > 65535:
                raise ValueError(f"{part!r} has no valid port")
            if not self._HOST.match(host) or (not host and not colon):
                raise ValueError(f"{part!r} has no valid host")
        return text


class Networks(Text):
    """IP addresses or CIDR networks, separated by spaces or commas: a tuple of ``ip_network``s."""

    def accepted(self, setting: Setting) -> str:
        return "IP addresses or networks (10.0.0.0/8), separated by spaces or commas" + _or_empty(setting)

    def parse(self, setting: Setting, value: Any) -> Any:
        import ipaddress

        networks = []
        for part in re.split(r"[\s,]+", str(value).strip()):
            if part:
                try:
                    networks.append(ipaddress.ip_network(part, strict=False))
                except ValueError:
                    raise ValueError(f"{part!r} is not an IP address or network") from None
        return tuple(networks)


# A setting's ``kind`` names its class here (the declarations below stay one line each).
KINDS: dict[Any, Text] = {
    str: Text(), bool: Bool(), int: Number(whole=True), float: Number(whole=False), "choice": Choice(),
    "url": Url(), "path": FilePath(), "database_url": DatabaseUrl(), "broker_url": BrokerUrl(), "prefix": Prefix(),
    "bind": Bind(), "networks": Networks(),
}


SETTINGS: tuple[Setting, ...] = (
    # --- core -------------------------------------------------------------------------
    Setting("DATABASE_URL", None,
            "SQLAlchemy URL. Default: SQLite file `courier.db` in `instance/` of a checkout; installed with "
            "`pip install .`, in `$XDG_DATA_HOME/courier/` (else `~/.local/share/courier/`), outside the virtualenv. "
            "PostgreSQL: `postgresql+psycopg://user:pass@host/db` (install the `postgres` extra).",
            kind="database_url", optional=True, secret=True),
    Setting("SQLITE_BUSY_TIMEOUT_MS", 5000,
            "How long a SQLite writer waits for another worker's lock before failing.",
            kind=int, minimum=0, maximum=600_000),
    Setting("MAX_CONTENT_LENGTH", 1024 * 1024, "Largest accepted request body in bytes (larger: 413).",
            kind=int, minimum=1024, maximum=1 << 30),
    Setting("LOG_LEVEL", "INFO", "Root log level.",
            kind="choice", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    Setting("LOG_FORMAT", "auto",
            "`json`: one JSON object per line (default under gunicorn, set by gunicorn.conf.py); `text`: short "
            "readable lines with coloured levels; `auto`: text when stderr is a terminal, else JSON.",
            kind="choice", choices=("auto", "json", "text")),
    Setting("ACCESS_LOG", True, "Emit one JSON log line per request (method, path, status, duration, response "
            "bytes, client address, user agent, request id).", kind=bool),
    Setting("TRUSTED_PROXIES", "127.0.0.1 ::1",
            "Proxies whose `X-Forwarded-For` is believed: a request from one of them is logged with the client "
            "address the proxy saw (the nearest untrusted address in the header); from anyone else, with the "
            "connection's own address. The compose file trusts its private network (only nginx reaches the "
            "web service there).", kind="networks", optional=True),
    Setting("METRICS_ENABLED", True,
            "Count and time requests for `/metrics` (Prometheus; summed over gunicorn's workers).", kind=bool),
    Setting("METRICS_DIR", None, "Folder for gunicorn's workers' metric files (emptied when gunicorn starts). "
            "Set it for `flask` commands too and they write there as well, so `/metrics` counts offers runs. "
            "Default: a new temporary folder per gunicorn start.", kind="path", optional=True),
    Setting("HTTP_POOL_MAXSIZE", 16, "Pooled connections kept per upstream host by each process.",
            kind=int, minimum=1, maximum=1000),
    Setting("OPEN_SCOPES", "pricing:read estimate:read ops:read docs:read",
            "Scopes open to every caller without an API key (space- or comma-separated). The others need a key "
            "with the scope (`flask api-keys create`): `runs:read` (offer runs), `offers:score` (real-time "
            "offers). Empty: every endpoint of the API needs a key; liveness (`/healthz`, for probes) and the bundled "
            "reference partner's routes (`COURIER_REFERENCE_PARTNER_ENABLED`) are always open.",
            kind=str, optional=True),
    # --- pricing (DOPC) -----------------------------------------------------------------
    Setting("VENUE_API_URL", "https://consumer-api.development.dev.woltapi.com/home-assignment-api/v1",
            "Base URL of the upstream venue API. Empty string: offline, only stored venue data is used.",
            kind="url", optional=True),
    Setting("VENUE_API_CONNECT_TIMEOUT_S", 0.5, "Connect timeout of one venue API attempt.",
            kind=float, above_zero=True, maximum=60),
    Setting("VENUE_API_READ_TIMEOUT_S", 0.5,
            "Read timeout of one venue API attempt (each attempt is also cut to the time left before the deadline).",
            kind=float, above_zero=True, maximum=60),
    Setting("VENUE_API_RETRIES", 5, "Retries of one venue API call (429, 5xx, connection errors).",
            kind=int, minimum=0, maximum=20),
    Setting("VENUE_API_DEADLINE_S", 2.5,
            "Total time budget of one venue lookup, retries and backoff included; no retry starts past it.",
            kind=float, above_zero=True, maximum=60),
    Setting("VENUE_API_MAX_ANSWER_BYTES", 1_048_576,
            "Largest venue API answer read (documents are 4-12 KB); a larger one is a failed attempt, 502 if all fail.",
            kind=int, minimum=1024, maximum=1_073_741_824),
    Setting("VENUE_STATIC_TTL_S", 3600, "Seconds a venue's static half (location) is fresh.",
            kind=float, minimum=0),
    Setting("VENUE_DYNAMIC_TTL_S", 60, "Seconds a venue's dynamic half (minimum, prices, ranges) is fresh.",
            kind=float, minimum=0),
    Setting("VENUE_MAX_STALE_S", 86400,
            "When a refresh fails, stored data younger than this is still served (stale-if-error).",
            kind=float, minimum=0),
    Setting("VENUE_FAILURE_BACKOFF_S", 5.0,
            "After an upstream failure for a slug, no new upstream attempt for it for this many seconds.",
            kind=float, minimum=0),
    Setting("VENUE_CACHE_ENABLED", True,
            "Keep venue data in memory and the database. False: upstream on every request (benchmarks).",
            kind=bool),
    Setting("PRICING_MAX_CART_VALUE", 100_000_000, "Largest accepted `cart_value` (smallest currency unit).",
            kind=int, minimum=0, maximum=10**18 - 1),
    # --- estimate -----------------------------------------------------------------------
    Setting("MODEL_PATH", str(DATA_DIR / "models" / "retrained.json"),
            "XGBoost JSON artifact used for delivery-time estimates.",
            kind="path"),
    Setting("ESTIMATE_UNKNOWN_VENUE", "default",
            "`default`: unknown venues use the median preparation time (venue_known false); `reject`: 404.",
            kind="choice", choices=("default", "reject")),
    Setting("PREP_TIMES_RELOAD_S", 5.0,
            "How often (seconds) a worker checks the database for a changed preparation-time mapping.",
            kind=float, minimum=0),
    # --- offers -------------------------------------------------------------------------
    Setting("PARTNERS_FILE", str(DATA_DIR / "partners.toml"), "TOML partner registry (see README).",
            kind="path"),
    Setting("REFERENCE_PARTNER_ENABLED", True, "Serve the reference partner's ML endpoints.",
            kind=bool),
    Setting("REFERENCE_PARTNER_PREFIX", "/partners/reference", "URL prefix of the reference partner.",
            kind="prefix"),
    Setting("OFFERS_MAX_TRANSACTIONS", 10_000, "Most transactions accepted in one real-time offer request.",
            kind=int, minimum=1, maximum=1_000_000),
    Setting("SERVICE_URL", None,
            "Address this service answers on, put where a partner's `base_url` says `{service}` (the bundled "
            "reference partner). Default: from `COURIER_BIND` (a wildcard host becomes 127.0.0.1), else "
            "`http://127.0.0.1:8000`.",
            kind="url", optional=True),
    Setting("OFFERS_MAX_CONSECUTIVE_FAILURES", 100,
            "`run-offers` stops (run `failed`, resumable) after this many members failed in a row; 0: never.",
            kind=int, minimum=0),
    Setting("OFFERS_DEFAULT_PARTNER", "reference", "Partner used when a request or command names none.",
            kind=str),
    Setting("OFFERS_REALTIME_DEADLINE_S", 5.0,
            "Time budget of each partner call of a real-time offer, retries included (at most 2 retries).",
            kind=float, above_zero=True, maximum=300),
    Setting("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0",
            "Celery broker for `run-offers --distributed` and its workers (`pip install -e '.[distributed]'`).",
            kind="broker_url", secret=True),
    Setting("CELERY_RESULT_BACKEND", None,
            "Where Celery keeps chunk task states (for `celery inspect`, Flower). Default: the broker URL.",
            kind="broker_url", optional=True, secret=True),
    Setting("CELERY_VISIBILITY_TIMEOUT_S", 3600,
            "Seconds before the broker hands an unacknowledged chunk (its worker died) to another worker; "
            "keep it above the slowest chunk's scoring time.", kind=int, minimum=1, maximum=7 * 86400),
    Setting("OFFERS_CHUNK_SIZE", 5000, "Members per chunk task of a distributed run.",
            kind=int, minimum=1, maximum=100_000),
    Setting("OFFERS_CHUNK_MAX_ATTEMPTS", 3,
            "Attempts of one chunk (errors, or its worker killed) before the distributed run ends `failed`.",
            kind=int, minimum=1, maximum=100),
    Setting("OFFERS_CHUNK_HEARTBEAT_S", 5.0,
            "How often a worker scoring a chunk says so in the database (its claim's heartbeat).",
            kind=float, above_zero=True, maximum=300),
    Setting("OFFERS_CHUNK_SILENT_S", 30.0,
            "A chunk whose worker has not said so for this long (killed, machine lost) is queued again by the "
            "coordinator, without waiting for the broker's visibility timeout. Keep it several heartbeats long.",
            kind=float, above_zero=True, maximum=86400),
    Setting("OFFERS_DATABASE_OUTAGE_S", 60.0,
            "An offers run (its writer, a distributed run's coordinator, the final status) waits this long for a "
            "database it cannot reach (a restart) before it stops; 0: stop at once.",
            kind=float, minimum=0, maximum=3600),
    Setting("OFFERS_DISTRIBUTED_STALL_S", 600.0,
            "A distributed run in which no chunk starts or finishes for this long ends `failed` (no workers?).",
            kind=float, above_zero=True),
    # --- runs submitted over REST and the web view ----------------------------------------------
    Setting("OFFERS_UPLOAD_DIR", None,
            "Folder where uploaded run inputs are kept (`<sha256>.csv`) for the coordinator worker to read: a "
            "folder, not the database, because the coordinator scans the file in bounded memory (polars reads "
            "it lazily) and only the coordinator reads it (chunk workers read their members from the database). "
            "Web and coordinator must share it (compose: the `uploads` volume). Default: `uploads/` beside the "
            "SQLite database.", kind="path", optional=True),
    Setting("OFFERS_UPLOAD_MAX_BYTES", 512 * 1024 * 1024,
            "Largest accepted run input (larger: 413, nothing kept). 512 MiB holds ~10 million transactions.",
            kind=int, minimum=1024, maximum=1 << 40),
    Setting("OFFERS_UPLOAD_RETENTION_DAYS", 7.0,
            "Uploaded inputs whose runs ended are removed this many days after their last run ended (checked at "
            "each upload and by `flask offers prune-uploads`); such a run can no longer be resumed. 0: at the "
            "next check.", kind=float, minimum=0, maximum=3650),
    Setting("RATE_LIMIT_STORAGE_URL", None,
            "Where rate-limit counters live, shared by every worker: `redis://...` or `memory://` (per process). "
            "Default: the Celery broker when it is Redis, else memory.", kind=str, optional=True, secret=True),
    Setting("RATE_LIMIT_OFFERS", "60/minute",
            "Per-key limit on real-time offers (each costs three partner calls), in the `limits` library's notation "
            "(`N/second|minute|hour|day`, several separated by `;`); empty: no limit.", kind=str, optional=True),
    Setting("RATE_LIMIT_RUN_SUBMISSIONS", "10/minute;100/day",
            "Per-key limit on starting, cancelling and resuming offer runs (REST and the web view); empty: no "
            "limit.", kind=str, optional=True),
    Setting("SECRET_KEY", None,
            "Signs the web view's session cookies. Set it (the same on every web process) in production; "
            "default: a random key kept in `secret_key` beside the SQLite database, made on first use.",
            kind=str, optional=True, secret=True),
    Setting("WEB_SESSION_HOURS", 8.0, "How long a web view sign-in lasts.", kind=float, above_zero=True,
            maximum=24 * 90),
    Setting("WEB_COOKIE_SECURE", False,
            "Send the web view's session cookie over HTTPS only; set it when users reach Courier through HTTPS.",
            kind=bool),
)

DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS}

# gunicorn's own settings (read by gunicorn.conf.py), checked the same way.
GUNICORN_SETTINGS: tuple[Setting, ...] = (
    Setting("BIND", "127.0.0.1:8000", "Address gunicorn listens on (`host:port`, or `unix:/path`).", kind="bind"),
    Setting("WORKERS", None, "Sync worker processes. Default: 2 x cores + 1.", kind=int, minimum=1, maximum=256,
            optional=True),
    Setting("TIMEOUT", 30, "Seconds before a silent worker is killed and replaced.", kind=int, minimum=1,
            maximum=3600),
    Setting("GRACEFUL_TIMEOUT", 30, "Seconds a worker gets to finish in-flight requests on shutdown.", kind=int,
            minimum=1, maximum=3600),
    Setting("KEEPALIVE", 2, "Seconds to keep an idle client connection (sync workers close anyway).", kind=int,
            minimum=0, maximum=300),
    Setting("GUNICORN_LOG_LEVEL", "info", "gunicorn's own log level.", kind="choice",
            choices=("debug", "info", "warning", "error", "critical")),
    Setting("CONTROL_SOCKET", None, "gunicornc control socket. Default: `~/.gunicorn/courier-<bind>.ctl`.",
            kind="path", optional=True),
)


def load_gunicorn_settings(environ: Mapping[str, str] | None = None) -> dict:
    environ = os.environ if environ is None else environ
    values = {}
    for setting in GUNICORN_SETTINGS:
        raw = environ.get(setting.variable, setting.default)
        try:
            values[setting.key] = setting.parse(raw)
        except ValueError as exc:
            raise setting.invalid(setting.variable, raw, exc) from None
    return values


def load_settings(environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> dict:
    """Every setting, typed: defaults < ``COURIER_<KEY>`` in ``environ`` < ``overrides``.

    Raises :class:`ConfigError` naming the first bad variable (or key), its value and what is
    accepted.  Keys in ``overrides`` that are not settings (Flask's own, e.g. TESTING) pass through.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        source, raw = "default", setting.default
        if setting.secret and setting.variable + FILE_SUFFIX in environ:
            source, raw = setting.variable + FILE_SUFFIX, from_environment(setting.variable, environ)
        elif setting.variable in environ:
            source, raw = setting.variable, environ[setting.variable]
        if setting.key in overrides:
            source, raw = setting.key, overrides.pop(setting.key)
        try:
            values[setting.key] = setting.parse(raw)
        except ValueError as exc:
            if source.endswith(FILE_SUFFIX):  # name the file, never echo a secret's contents
                raise ConfigError(f"{source}={environ[source]!r}: the file does not hold a valid value ({exc}): "
                                  f"expected {setting.accepted()}") from None
            raise setting.invalid(setting.variable if source == "default" else source, raw, exc) from None
    values.update(overrides)
    return values


def _default_text(setting: Setting) -> str:
    if setting.default is None:
        return {"DATABASE_URL": "(instance/courier.db; installed: ~/.local/share/courier/courier.db)",
                "SERVICE_URL": "(from COURIER_BIND)",
                "WORKERS": "(2 x cores + 1)", "METRICS_DIR": "(a temporary folder)",
                "CONTROL_SOCKET": "(~/.gunicorn/courier-<bind>.ctl)"}.get(setting.key, "")
    if isinstance(setting.default, bool):
        return "true" if setting.default else "false"
    return str(setting.default).replace(str(PROJECT_ROOT) + "/", "")


def markdown_table() -> str:
    """The README's configuration table, generated from the declarations above (a test compares them)."""
    lines = ["| variable | default | accepted | meaning |", "|---|---|---|---|"]
    for group in (SETTINGS, GUNICORN_SETTINGS):
        for setting in group:
            secret = (f" Holds a secret: can also be read from a file named by `{setting.variable}{FILE_SUFFIX}` "
                      "(Docker/Kubernetes secrets)." if setting.secret else "")
            lines.append(f"| `{setting.variable}` | `{_default_text(setting)}` | {setting.accepted()} | "
                         f"{setting.help}{secret} |")
    return "\n".join(lines)


# COURIER_* variables read by tools around the app rather than by its settings: the Makefile and
# compose.yaml (PORT, IMAGE, BASE_IMAGE, WORKER_CONCURRENCY), the container's entrypoint (WAIT_FOR,
# WAIT_TIMEOUT_S, SECRETS_DIR), the stack test (STACK_TOOLS, STACK_WORKERS, REFERENCE_PARTNER_URL),
# the test suite (TEST_*) and the benchmarks (BENCH_*).  Known, so never warned about.
TOOLING_VARIABLES = frozenset({
    "COURIER_PORT", "COURIER_IMAGE", "COURIER_BASE_IMAGE", "COURIER_WORKER_CONCURRENCY", "COURIER_WAIT_FOR",
    "COURIER_WAIT_TIMEOUT_S", "COURIER_SECRETS_DIR", "COURIER_STACK_TOOLS", "COURIER_STACK_WORKERS",
    "COURIER_REFERENCE_PARTNER_URL", "COURIER_TEST_POSTGRES_URL", "COURIER_TEST_PARTNER_TOKEN",
    "COURIER_BENCH_PYTHON_LOAD", "COURIER_CONFIG_CHECKED",
})


def _partner_header_variables(partners_file: str) -> set[str]:
    """The environment variables the partner registry names for its headers' values (they may be
    COURIER_*); none if the file cannot be read, which the registry itself reports when used."""
    import tomllib

    try:
        with open(partners_file, "rb") as handle:
            partners = tomllib.load(handle).get("partners", {})
    except (OSError, ValueError):
        return set()
    return {str(variable) for partner in partners.values() if isinstance(partner, dict)
            for variable in (partner.get("headers") or {}).values()}


def unknown_variables(environ: Mapping[str, str], partners_file: str) -> list[str]:
    """One message per ``COURIER_*`` variable no setting, tool or partner header reads (a typo such
    as ``COURIER_WORKER`` would otherwise be ignored in silence), naming the closest known one."""
    import difflib

    settings = {s.variable for s in (*SETTINGS, *GUNICORN_SETTINGS)}
    known = settings | {s.variable + FILE_SUFFIX for s in SETTINGS if s.secret} | TOOLING_VARIABLES
    unknown = sorted(n for n in environ if n.startswith("COURIER_") and n not in known)
    if not unknown:
        return []  # the usual case: no need to read the partner registry at start-up
    known |= _partner_header_variables(partners_file)
    messages = []
    suffixes = {name.removeprefix("COURIER_"): name for name in known}
    for name in (n for n in unknown if n not in known):
        # Compared without the common prefix, which would make every pair look alike.
        closest = difflib.get_close_matches(name.removeprefix("COURIER_"), sorted(suffixes), n=1, cutoff=0.75)
        messages.append(f"{name} is not a Courier setting and is ignored"
                        + (f"; did you mean {suffixes[closest[0]]}?" if closest else " (the README lists them all)"))
    return messages


_warned_unknown = False


def warn_unknown_variables(environ: Mapping[str, str], partners_file: str, warn: Any) -> None:
    """Call ``warn(message)`` for each unknown ``COURIER_*`` variable, once per process tree:
    gunicorn's master warns and its forked workers inherit the flag, so five workers do not repeat it."""
    global _warned_unknown
    if _warned_unknown or environ.get("COURIER_CONFIG_CHECKED"):  # `make run` checked them a step before
        return
    _warned_unknown = True
    for message in unknown_variables(environ, partners_file):
        warn(message)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Every COURIER_* setting of the app and of gunicorn, checked as start-up will check them;
    unknown COURIER_* variables are printed as warnings."""
    environ = os.environ if environ is None else environ
    settings = load_settings(environ)
    load_gunicorn_settings(environ)
    for message in unknown_variables(environ, settings["PARTNERS_FILE"]):
        print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    # python config.py: print the README's configuration table; python config.py check: check the
    # environment's settings before anything else runs (`make run` does, before migrating).
    if sys.argv[1:] == ["check"]:
        try:
            check_environment()
        except ConfigError as exc:
            sys.exit(f"configuration error: {exc}")
    else:
        print(markdown_table())
