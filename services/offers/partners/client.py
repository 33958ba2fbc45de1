"""The clients that call a partner: ``PartnerClient`` (sync, the request path) and ``AsyncPartnerClient``
(asyncio, batch runs), with the HTTP policy each uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.errors import UpstreamInvalid
from services.http import json_codec
from services.http.aio import AsyncHttpClient, RetryEvent
from services.http.policy import HttpPolicy
from services.http.sync import HttpClient
from services.offers.partners.answers import batch_items, item_or_error, offer_of, prediction_of
from services.offers.partners.config import PartnerConfig


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
        pool_maxsize=2 * concurrency, max_answer_bytes=config.max_answer_bytes,
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
            max_answer_bytes=config.max_answer_bytes,
        )
        self.http = HttpClient(self.upstream, config.base_url, policy, headers=config.headers())

    def _prediction(self, path: str, features: dict[str, Any]) -> float:
        return prediction_of(self.http.post_json(path, self.config.payload(features)), self.config.fields["prediction"],
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
        return json_codec.dumps({json_name: features[name] for json_name, name in self._names})

    def encode_batch(self, rows: list[dict[str, Any]]) -> bytes:
        names = self._names
        return json_codec.dumps([{json_name: row[name] for json_name, name in names} for row in rows])

    async def ping(self) -> Any:
        return await self.http.get_json(self.config.ping_path)

    async def predict(self, step: str, body: bytes) -> float:
        path = self.config.ats_path if step == "ats" else self.config.resp_path
        return prediction_of(await self.http.post_json(path, body), self._prediction, self.upstream)

    async def assign_offer(self, ats: float, resp: float) -> str:
        body = json_codec.dumps({self._ats: ats, self._resp: resp})
        return offer_of(await self.http.post_json(self.config.offer_path, body), self._offer, self.upstream)

    async def predict_batch(self, step: str, body: bytes, size: int) -> list[float | UpstreamInvalid]:
        """One prediction per member, or the member's own ``UpstreamInvalid`` for an unusable item."""
        batch = self.config.batch
        assert batch is not None
        path = batch.ats_path if step == "ats" else batch.resp_path
        items = batch_items(await self.http.post_json(path, body), size, self.upstream)
        return [item_or_error(prediction_of, item, self._prediction, self.upstream) for item in items]

    async def assign_offer_batch(self, pairs: list[tuple[float, float]]) -> list[str | UpstreamInvalid]:
        batch = self.config.batch
        assert batch is not None
        body = json_codec.dumps([{self._ats: a, self._resp: r} for a, r in pairs])
        items = batch_items(await self.http.post_json(batch.offer_path, body), len(pairs), self.upstream)
        return [item_or_error(offer_of, item, self._offer, self.upstream) for item in items]
