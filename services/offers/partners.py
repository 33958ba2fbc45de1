"""The partner registry (TOML) and the clients that call a partner: sync (request path) and async (batch)."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import FILE_SUFFIX, ConfigError, from_environment
from services.errors import NotFound, UpstreamInvalid
from services.http_async import AsyncHttpClient, RetryEvent
from services.http_client import HttpClient, HttpPolicy
from services.offers.registry_schema import DEFAULT_MAX_BATCH
from services.offers.registry_schema import FIELD_DEFAULTS as _FIELD_DEFAULTS

# A base_url may start with this placeholder: the address this service itself answers on (see
# ``service_url``), so the bundled reference partner follows the service wherever it listens.
SERVICE_PLACEHOLDER = "{service}"




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

    @property
    def display_url(self) -> str:
        """``base_url`` safe to print or store: any user:password in it is masked."""
        return redact_url(self.base_url)

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


def parse_registry(doc: dict[str, Any], path: str, service_url: str | None = None) -> PartnerRegistry:
    """Validate every partner (``registry_schema``); all problems at once, each naming partner and key."""
    from services.offers.registry_schema import parse_partners

    partners_raw = doc.get("partners")
    if not isinstance(partners_raw, dict) or not partners_raw:
        raise PartnerConfigError(path, ["no [partners.<name>] tables"])

    def substitute(base_url: Any) -> Any:
        if isinstance(base_url, str) and base_url.startswith(SERVICE_PLACEHOLDER):
            return (service_url or service_url_from_bind(None)).rstrip("/") + base_url[len(SERVICE_PLACEHOLDER):]
        return base_url

    loaded, problems = parse_partners(partners_raw, substitute)
    if problems:
        raise PartnerConfigError(path, problems)
    registry = PartnerRegistry(path=path)
    for name, data in loaded.items():
        fields_ = data.pop("fields_")
        registry.partners[name] = PartnerConfig(name=name, fields={**_FIELD_DEFAULTS, **fields_},
                                                header_env=data.pop("headers"), **data)
    return registry


def load_registry(path: str | Path, service_url: str | None = None) -> PartnerRegistry:
    """The registry at ``path``; ``{service}`` in a base_url becomes ``service_url``."""
    path = str(path)
    try:
        with open(path, "rb") as handle:
            doc = tomllib.load(handle)
    except OSError as exc:
        raise PartnerConfigError(path, [f"cannot read ({exc.strerror or exc})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise PartnerConfigError(path, [f"not valid TOML ({exc})"]) from exc
    except UnicodeDecodeError as exc:
        raise PartnerConfigError(path, ["not UTF-8 text, so not TOML"]) from exc
    return parse_registry(doc, path, service_url)


def registry_readiness(path: str | Path, service_url: str | None, default_partner: str) -> Callable[[], str | None]:
    """Readiness check of the offers capability: the registry loads, names the default partner, and
    every partner's header secrets are there. Without it a deployment whose registry is unreadable
    (a missing mount, a bad edit) or whose partner secret is missing answered ``ready`` while every
    real-time offer failed 503; read on every probe so that a fixed file is seen without a restart
    (~1 ms: a probe every few seconds)."""

    def check() -> str | None:
        try:
            registry = load_registry(path, service_url)
            registry.get(default_partner)
            for partner in registry.partners.values():
                partner.headers()
        except PartnerConfigError as exc:
            return f"partner registry unusable: {exc}"
        except NotFound:
            return (f"the default partner {default_partner!r} (COURIER_OFFERS_DEFAULT_PARTNER) is not in the "
                    f"registry {path}")
        return None

    return check


def _finite(value: Any, what: str, upstream: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UpstreamInvalid(f"{upstream} sent an unusable {what}: {value!r}", upstream=upstream)
    return float(value)


def prediction_of(body: Any, field_name: str, upstream: str) -> float:
    """The prediction in one answer object, or ``UpstreamInvalid`` saying what was wrong."""
    if not isinstance(body, dict):
        raise UpstreamInvalid(f"{upstream} answered with a non-object", upstream=upstream)
    return _finite(body.get(field_name), "prediction", upstream)


def offer_of(body: Any, field_name: str, upstream: str) -> str:
    offer = body.get(field_name) if isinstance(body, dict) else None
    if not isinstance(offer, str) or not offer or len(offer) > 64:
        raise UpstreamInvalid(f"{upstream} sent an unusable offer: {offer!r}", upstream=upstream)
    return offer


def batch_items(body: Any, expected: int, upstream: str) -> list[Any]:
    """A batch answer must be a list with one item per member sent, in the same order."""
    if not isinstance(body, list) or len(body) != expected:
        got = f"a list of {len(body)}" if isinstance(body, list) else type(body).__name__
        raise UpstreamInvalid(f"{upstream} answered a batch of {expected} with {got}", upstream=upstream)
    return body


def batch_policy(config: PartnerConfig, concurrency: int) -> HttpPolicy:
    """How the batch scorer calls a partner (see ``PartnerClient`` for the request-path policy)."""
    return HttpPolicy(
        connect_timeout_s=config.connect_timeout_s, read_timeout_s=config.read_timeout_s, retries=config.retries,
        # Batch scoring can afford to wait a little longer for a rate-limited partner than an
        # interactive request: up to 2 s per Retry-After, 1 s max backoff.
        backoff_factor_s=0.05, backoff_jitter_s=0.05, backoff_max_s=1.0, retry_after_max_s=2.0,
        deadline_s=(config.connect_timeout_s + config.read_timeout_s) * (config.retries + 1),
        # Scoring is pure: the partner's POSTs are idempotent and safe to retry.
        retry_post=True,
        # ATS and RESP of one member (or batch) are in flight together: two connections per slot.
        pool_maxsize=2 * concurrency,
    )


class PartnerClient:
    """Calls one partner's endpoints.  Its POSTs are idempotent (pure scoring), so they are retried."""

    def __init__(self, config: PartnerConfig, pool_maxsize: int | None = None,
                 deadline_s: float | None = None) -> None:
        self.config = config
        self.upstream = f"partner:{config.name}"
        policy = HttpPolicy(
            connect_timeout_s=config.connect_timeout_s, read_timeout_s=config.read_timeout_s,
            retries=config.retries,
            # Batch scoring can afford to wait a little longer for a rate-limited partner than an
            # interactive request: up to 2 s per Retry-After, 1 s max backoff.
            backoff_factor_s=0.05, backoff_jitter_s=0.05, backoff_max_s=1.0, retry_after_max_s=2.0,
            deadline_s=deadline_s or (config.connect_timeout_s + config.read_timeout_s) * (config.retries + 1),
            # ATS and RESP of one member are in flight together: two connections per member slot.
            retry_post=True, pool_maxsize=2 * (pool_maxsize or config.max_concurrency),
        )
        self.http = HttpClient(self.upstream, config.base_url, policy, headers=config.headers())

    def payload(self, features: dict[str, Any]) -> dict[str, Any]:
        return {json_name: features[name] for json_name, name in self.config.features.items()}

    def _prediction(self, path: str, features: dict[str, Any]) -> float:
        return prediction_of(self.http.post_json(path, self.payload(features)), self.config.fields["prediction"],
                             self.upstream)

    def predict_ats(self, features: dict[str, Any]) -> float:
        return self._prediction(self.config.ats_path, features)

    def predict_resp(self, features: dict[str, Any]) -> float:
        return self._prediction(self.config.resp_path, features)

    def assign_offer(self, ats: float, resp: float) -> str:
        f = self.config.fields
        body = self.http.post_json(self.config.offer_path, {f["ats"]: ats, f["resp"]: resp})
        return offer_of(body, f["offer"], self.upstream)

    def ping(self) -> Any:
        return self.http.get_json(self.config.ping_path)

    def close(self) -> None:
        self.http.close()


class AsyncPartnerClient:
    """The batch scorer's view of one partner: per-member and batch calls on one event loop.

    A member's features are encoded once and the same bytes go to ATS and RESP; answers are
    checked exactly as the sync client checks them (``UpstreamInvalid`` naming what was wrong).
    """

    def __init__(self, config: PartnerConfig, concurrency: int,
                 on_retry: Callable[[RetryEvent], None] | None = None) -> None:
        self.config = config
        self.upstream = f"partner:{config.name}"
        self.http = AsyncHttpClient(self.upstream, config.base_url, batch_policy(config, concurrency),
                                    headers=config.headers(), on_retry=on_retry)
        self._names = list(config.features.items())  # (JSON name, feature name)
        self._prediction = config.fields["prediction"]
        self._ats, self._resp, self._offer = config.fields["ats"], config.fields["resp"], config.fields["offer"]

    async def __aenter__(self) -> AsyncPartnerClient:
        await self.http.open()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.http.close()

    def encode(self, features: dict[str, Any]) -> bytes:
        return json.dumps({json_name: features[name] for json_name, name in self._names}).encode()

    def encode_batch(self, rows: list[dict[str, Any]]) -> bytes:
        names = self._names
        return json.dumps([{json_name: row[name] for json_name, name in names} for row in rows]).encode()

    async def ping(self) -> Any:
        return await self.http.get_json(self.config.ping_path)

    async def predict(self, step: str, body: bytes) -> float:
        path = self.config.ats_path if step == "ats" else self.config.resp_path
        return prediction_of(await self.http.post_json(path, body), self._prediction, self.upstream)

    async def assign_offer(self, ats: float, resp: float) -> str:
        body = json.dumps({self._ats: ats, self._resp: resp}).encode()
        return offer_of(await self.http.post_json(self.config.offer_path, body), self._offer, self.upstream)

    async def predict_batch(self, step: str, body: bytes, size: int) -> list[float | UpstreamInvalid]:
        """One prediction per member, or the member's own ``UpstreamInvalid`` for an unusable item."""
        batch = self.config.batch
        assert batch is not None
        path = batch.ats_path if step == "ats" else batch.resp_path
        items = batch_items(await self.http.post_json(path, body), size, self.upstream)
        return [_or_error(prediction_of, item, self._prediction, self.upstream) for item in items]

    async def assign_offer_batch(self, pairs: list[tuple[float, float]]) -> list[str | UpstreamInvalid]:
        batch = self.config.batch
        assert batch is not None
        body = json.dumps([{self._ats: a, self._resp: r} for a, r in pairs]).encode()
        items = batch_items(await self.http.post_json(batch.offer_path, body), len(pairs), self.upstream)
        return [_or_error(offer_of, item, self._offer, self.upstream) for item in items]


def _or_error(parse: Callable[[Any, str, str], Any], item: Any, field_name: str, upstream: str) -> Any:
    try:
        return parse(item, field_name, upstream)
    except UpstreamInvalid as exc:
        return exc
