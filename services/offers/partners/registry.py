"""The partner registry file (TOML): read, checked by ``registry_schema``, turned into ``PartnerConfig``s;
and the offers capability's readiness check, which reads it."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.errors import NotFound
from services.offers.partners.config import (
    FIELD_DEFAULTS,
    SERVICE_PLACEHOLDER,
    PartnerConfig,
    PartnerConfigError,
    PartnerRegistry,
    service_url_from_bind,
)
from services.offers.partners.registry_schema import parse_partners


def parse_registry(doc: dict[str, Any], path: str, service_url: str | None = None) -> PartnerRegistry:
    """Validate every partner (``registry_schema``); all problems at once, each naming partner and key."""
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
        registry.partners[name] = PartnerConfig(name=name, fields={**FIELD_DEFAULTS, **fields_},
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

    # The probe answers anyone with ops:read: the file's name, not where it lives on the server.
    full, name = str(path), Path(path).name

    def check() -> str | None:
        try:
            registry = load_registry(path, service_url)
            registry.get(default_partner)
            for partner in registry.partners.values():
                partner.headers()
        except PartnerConfigError as exc:
            return f"partner registry unusable: {exc}".replace(full, name)
        except NotFound:
            return (f"the default partner {default_partner!r} (COURIER_OFFERS_DEFAULT_PARTNER) is not in the "
                    f"registry {name}")
        return None

    return check
