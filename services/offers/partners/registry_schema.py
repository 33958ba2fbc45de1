"""The partner registry's TOML, validated by marshmallow schemas (the library the API already uses).

Each problem is reported as ``partners.<name>.<key>[.<subkey>]: <problem>``, naming the value
where it helps; ``parse_partners`` turns a marshmallow error tree into that list.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validates

from services.offers.features.definitions import REGISTRY
from services.offers.partners.config import DEFAULT_MAX_BATCH, FIELD_DEFAULTS, BatchEndpoints, redact_url


class _Path(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not value.startswith("/"):
            raise ValidationError(f"must be a path starting with '/', got {value!r}")
        return value


class _HttpUrl(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            shown = redact_url(value) if isinstance(value, str) else value
            raise ValidationError(f"must be an http(s) URL, got {shown!r}")
        return value


class _Positive(fields.Field):
    def __init__(self, *, integer: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.integer = integer

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0 or (
                self.integer and int(value) != value):
            raise ValidationError(f"must be a positive {'integer' if self.integer else 'number'}, got {value!r}")
        return int(value) if self.integer else float(value)


class _Retries(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10:
            raise ValidationError(f"must be a whole number from 0 to 10, got {value!r}")
        return value


class _AnswerCap(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 1 << 30:
            raise ValidationError(f"must be a whole number of bytes from 1024 to {1 << 30}, got {value!r}")
        return value


class BatchSchema(Schema):
    class Meta:
        unknown = RAISE

    ats_path = _Path(required=True)
    resp_path = _Path(required=True)
    offer_path = _Path(required=True)
    max_size = _Positive(integer=True, load_default=DEFAULT_MAX_BATCH)
    concurrency = _Positive(integer=True, load_default=4)

    @post_load
    def _endpoints(self, data, **kwargs):
        return BatchEndpoints(**data)


class PartnerSchema(Schema):
    """One ``[partners.<name>]`` table."""

    class Meta:
        unknown = RAISE

    base_url = _HttpUrl(required=True)
    ping_path = _Path(load_default="/")
    ats_path = _Path(required=True)
    resp_path = _Path(required=True)
    offer_path = _Path(required=True)
    features = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    fields_ = fields.Dict(data_key="fields", keys=fields.String(), values=fields.String(), load_default=dict)
    headers = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    connect_timeout_s = _Positive(load_default=1.0)
    read_timeout_s = _Positive(load_default=5.0)
    retries = _Retries(load_default=3)
    max_concurrency = _Positive(integer=True, load_default=16)
    max_answer_bytes = _AnswerCap(load_default=4 * 1024 * 1024)
    batch = fields.Nested(BatchSchema, load_default=None, allow_none=False)

    @validates("features")
    def _known_features(self, value: dict, **kwargs) -> None:
        if not value:
            raise ValidationError("must map JSON names to feature names")
        unknown = {name: [f"unknown feature {feature!r} (known: {', '.join(REGISTRY)})"]
                   for name, feature in value.items() if feature not in REGISTRY}
        if unknown:
            raise ValidationError(unknown)

    @validates("fields_")
    def _known_fields(self, value: dict, **kwargs) -> None:
        unknown = sorted(set(value) - set(FIELD_DEFAULTS))
        if unknown:
            raise ValidationError(f"unknown key(s) {unknown}")

    @validates("headers")
    def _env_names(self, value: dict, **kwargs) -> None:
        if not all(value.values()):
            raise ValidationError("must map header names to environment variable names")


_SCHEMA = PartnerSchema()
_PLAIN = {"Unknown field.": "unknown key", "Missing data for required field.": "is required",
          "Not a valid mapping type.": "must be a table", "Invalid input type.": "must be a table"}


def flatten(errors: Any, where: str) -> list[str]:
    """A marshmallow error tree as ``where.key.subkey: problem`` lines."""
    if isinstance(errors, dict):
        return [line for key, sub in errors.items()
                for line in flatten(sub, where if key == "_schema" else f"{where}.{key}")]
    if isinstance(errors, list):
        return [line for sub in errors for line in flatten(sub, where)]
    return [f"{where}: {_PLAIN.get(str(errors), errors)}"]


def parse_partners(raw: dict[str, Any],
                   substitute: Callable[[Any], Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each partner's validated settings, and every problem of every partner (all reported at once)."""
    loaded: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name, table in raw.items():
        where = f"partners.{name}"
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table")
            continue
        table = {**table, "base_url": substitute(table.get("base_url"))} if "base_url" in table else table
        try:
            loaded[name] = _SCHEMA.load(table)
        except ValidationError as exc:
            problems.extend(flatten(exc.messages, where))
    return loaded, problems
