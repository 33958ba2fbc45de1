"""The bundled reference partner, answered in this process instead of over HTTP to itself.

Under gunicorn's sync workers a real-time offer holds its worker while its three partner calls
wait for other workers of the same pool; with the bundled partner served by the service itself
(``make run``'s defaults), 8 concurrent offers on 5 workers took every worker and each call waited
for one that could only free up when it answered: every request ended 504 after the 5 s deadline
(0.67 req/s). A worker never waits on its own pool now: when a partner's base URL is this
service's own reference endpoints, the same formulas answer here, through the same payload mapping
and answer checks as the HTTP client. A partner that is another service keeps the HTTP client.
"""

from __future__ import annotations

from typing import Any

from services.errors import Unprocessable, UpstreamInvalid
from services.offers.partners.answers import offer_of, prediction_of
from services.offers.partners.config import PartnerConfig
from services.offers.reference import formulas


class InProcessReferencePartner:
    """``PartnerClient``'s interface (predict_ats, predict_resp, assign_offer, ping, close) on the
    reference formulas; a 422 of theirs is what the HTTP client makes of one: 502 ``upstream_invalid``."""

    def __init__(self, config: PartnerConfig) -> None:
        self.config = config
        self.upstream = f"partner:{config.name}"

    def _answer(self, formula: Any, body: dict[str, Any]) -> Any:
        try:
            return formula(body)
        except Unprocessable as exc:
            raise UpstreamInvalid(f"{self.upstream} rejected the request with status 422", upstream=self.upstream,
                                  details={"upstream_status": 422, "problems": exc.details}) from exc

    def _prediction(self, formula: Any, features: dict[str, Any]) -> float:
        return prediction_of({"prediction": self._answer(formula, self.config.payload(features))}, "prediction",
                             self.upstream)

    def predict_ats(self, features: dict[str, Any]) -> float:
        return self._prediction(formulas.predict_ats, features)

    def predict_resp(self, features: dict[str, Any]) -> float:
        return self._prediction(formulas.predict_resp, features)

    def assign_offer(self, ats: float, resp: float) -> str:
        answer = {"offer": self._answer(formulas.offer_for, {"ats_prediction": ats, "resp_prediction": resp})}
        return offer_of(answer, "offer", self.upstream)

    def ping(self) -> Any:
        return {"msg": "pong"}

    def close(self) -> None:
        pass


def is_served_here(config: PartnerConfig, own_reference_url: str | None) -> bool:
    """True when ``config`` points at this service's own reference endpoints (and they are served)
    and sends no headers: a partner with secrets is treated as the remote service it claims to be."""
    return (own_reference_url is not None and not config.header_env
            and config.base_url.rstrip("/") == own_reference_url.rstrip("/"))
