"""A partner's configuration as Courier holds it (``PartnerConfig``, its batch endpoints, the registry of
them), and the URL helpers it needs. Loading the file is ``registry``; checking it, ``registry_schema``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config import FILE_SUFFIX, ConfigError, from_environment
from services.errors import NotFound

# A base_url may start with this placeholder: the address this service itself answers on (see
# ``service_url``), so the bundled reference partner follows the service wherever it listens.
SERVICE_PLACEHOLDER = "{service}"
FIELD_DEFAULTS = {"prediction": "prediction", "ats": "ats_prediction", "resp": "resp_prediction", "offer": "offer"}
DEFAULT_MAX_BATCH = 1000  # the reference partner accepts at most this many items per batch call


class PartnerConfigError(Exception):
    """The registry file is unusable; ``problems`` lists each, prefixed by partner and key."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class BatchEndpoints:
    """A partner's optional batch endpoints: a JSON list in, a list out in the same order."""

    ats_path: str
    resp_path: str
    offer_path: str
    max_size: int = DEFAULT_MAX_BATCH
    concurrency: int = 4  # batch calls in flight at once


@dataclass(frozen=True)
class PartnerConfig:
    name: str
    base_url: str
    ping_path: str
    ats_path: str
    resp_path: str
    offer_path: str
    features: dict[str, str]  # JSON name -> registry feature name
    fields: dict[str, str]
    header_env: dict[str, str]  # header -> environment variable name
    connect_timeout_s: float = 1.0
    read_timeout_s: float = 5.0
    retries: int = 3
    max_concurrency: int = 16
    batch: BatchEndpoints | None = None
    # The largest answer read from this partner; more is one bad attempt. 4 MiB holds a 1,000-item
    # batch answer (~40 KB) a hundred times over; a partner with bigger batches raises it.
    max_answer_bytes: int = 4 * 1024 * 1024

    @property
    def display_url(self) -> str:
        """``base_url`` safe to print or store: any user:password in it is masked."""
        return redact_url(self.base_url)

    def payload(self, features: dict[str, Any]) -> dict[str, Any]:
        """What the partner receives for one member: its features under the partner's JSON names."""
        return {json_name: features[name] for json_name, name in self.features.items()}

    def headers(self) -> dict[str, str]:
        """Header values from the environment (each variable, or a file named by ``<variable>_FILE``:
        mounted secrets); a missing variable or an unreadable file is a configuration error."""
        values: dict[str, str] = {}
        missing, problems = [], []
        for header, env in self.header_env.items():
            try:
                value = from_environment(env)
            except ConfigError as exc:
                problems.append(f"partners.{self.name}.headers.{header}: {exc}")
                continue
            if value is None:
                missing.append(env)
            else:
                values[header] = value
        if missing:
            problems.append(f"partners.{self.name}.headers: environment variable(s) {', '.join(missing)} not set "
                            f"(nor {', '.join(m + FILE_SUFFIX for m in missing)})")
        if problems:
            raise PartnerConfigError(self.name, problems)
        return values


@dataclass
class PartnerRegistry:
    path: str
    partners: dict[str, PartnerConfig] = field(default_factory=dict)

    def get(self, name: str) -> PartnerConfig:
        try:
            return self.partners[name]
        except KeyError:
            raise NotFound(f"Unknown partner {name!r}.", code="partner_not_found",
                           details={"partner": name, "known": sorted(self.partners)}) from None


def redact_url(url: str) -> str:
    """The URL with credentials (``user:password@``) masked, for logs, output and run records."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def service_url_from_bind(bind: str | None) -> str:
    """``http://host:port`` for a gunicorn bind address; a wildcard host is reached on loopback."""
    bind = (bind or "127.0.0.1:8000").split(",")[0].strip()
    if bind.startswith("unix:"):
        return "http://127.0.0.1:8000"
    host, _, port = bind.rpartition(":")
    if not host:
        host, port = bind, "8000"
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"
