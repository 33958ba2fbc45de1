"""API keys: creation (shown once), listing, revocation, and verification of a presented key.

A key reads ``courier_<id>_<secret>``: ``id`` (12 hex digits) finds the row, ``secret`` (32
random bytes, URL-safe base64) is checked against ``sha256(salt + secret)`` with a constant-time
comparison.  A fast salted hash is enough here, unlike for passwords: a 256-bit random secret
cannot be guessed, so a slow KDF would only add milliseconds to every authenticated request.
The database never holds a usable key.

Callers own the transaction (views and CLI commands commit).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.errors import NotFound
from services.tables import ApiKey, utcnow

PREFIX = "courier_"
_KEY_RE = re.compile(r"^courier_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class Scope(enum.StrEnum):
    """What a key (or an open endpoint) allows; the value is what clients and config spell."""

    RUNS_READ = "runs:read"  # offer-run listing, results, export
    RUNS_WRITE = "runs:write"  # starting, cancelling and resuming offer runs (each costs partner calls)
    OFFERS_SCORE = "offers:score"  # real-time offers (each calls a partner at its cost)
    PRICING_READ = "pricing:read"
    ESTIMATE_READ = "estimate:read"
    OPS_READ = "ops:read"  # health, readiness
    DOCS_READ = "docs:read"  # OpenAPI document and its page

    @classmethod
    def parse_list(cls, text: str) -> frozenset[Scope]:
        """``"a b"`` or ``"a,b"`` → scopes; ValueError naming the unknown ones."""
        names = [n for n in re.split(r"[\s,]+", text.strip()) if n]
        known = {s.value: s for s in cls}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return frozenset(known[n] for n in names)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class CreatedKey:
    info: KeyInfo
    key: str  # the only time the full key exists outside the client


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, tuple(row.scopes.split()), row.created_at, row.revoked_at)


def create_key(session: Session, name: str, scopes: frozenset[Scope] | set[Scope]) -> CreatedKey:
    if not scopes:
        raise ValueError("a key needs at least one scope")
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    row = ApiKey(id=key_id, name=name, scopes=" ".join(sorted(s.value for s in scopes)), salt=salt,
                 secret_sha256=_digest(salt, secret), created_at=utcnow())
    session.add(row)
    session.flush()
    return CreatedKey(_info(row), f"{PREFIX}{key_id}_{secret}")


def list_keys(session: Session) -> list[KeyInfo]:
    return [_info(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))]


def revoke_key(session: Session, key_id: str) -> KeyInfo:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"No API key with id {key_id!r}.", code="api_key_not_found", details={"id": key_id})
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()
    return _info(row)


def verify_key(session: Session, presented: str) -> KeyInfo | None:
    """The key's info if ``presented`` is a live key, else None (malformed, unknown, wrong or revoked)."""
    match = _KEY_RE.match(presented)
    if match is None:
        return None
    key_id, secret = match.groups()
    row = session.get(ApiKey, key_id)
    # Compare even when the row is missing, so a wrong id and a wrong secret take the same time.
    salt, expected = (row.salt, row.secret_sha256) if row is not None else ("00" * 16, "0" * 64)
    if not hmac.compare_digest(_digest(salt, secret), expected) or row is None or row.revoked_at is not None:
        return None
    return _info(row)


def live_key(session: Session, key_id: str) -> KeyInfo | None:
    """The key's info if ``key_id`` names a key that exists and is not revoked (a web session's
    sign-in is re-checked with it on every page: revoking the key ends the session)."""
    row = session.get(ApiKey, key_id) if isinstance(key_id, str) and len(key_id) <= 16 else None
    if row is None or row.revoked_at is not None:
        return None
    return _info(row)
