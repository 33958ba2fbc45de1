"""What a partner answers, checked: a finite prediction, a short offer code, a batch of the right size."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from services.errors import UpstreamInvalid


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


def item_or_error(parse: Callable[[Any, str, str], Any], item: Any, field_name: str, upstream: str) -> Any:
    try:
        return parse(item, field_name, upstream)
    except UpstreamInvalid as exc:
        return exc
