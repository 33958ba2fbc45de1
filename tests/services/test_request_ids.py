"""The request id travels: outbound calls, background threads, and a run id for batch runs."""

from __future__ import annotations

import logging
from datetime import date

import responses

from config import DATA_DIR
from services.http.policy import HttpPolicy
from services.http.sync import HttpClient
from services.logs import request_id_var
from services.offers.runs.lifecycle import RunOptions
from services.offers.runs.local import run_offers
from tests.pricing_fixtures import register_venue

VENUE_API = "http://venue-api.test/v1"
PRICE = ("/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki&cart_value=1000"
         "&user_lat=60.17094&user_lon=24.93087")


def test_outbound_calls_carry_the_current_request_id():
    with responses.RequestsMock() as mock:
        mock.get("http://up.test/x", json={})
        token = request_id_var.set("rid-outbound-1")
        try:
            HttpClient("up", "http://up.test", HttpPolicy(deadline_s=1.0)).get_json("/x")
        finally:
            request_id_var.reset(token)
        assert mock.calls[0].request.headers["X-Request-ID"] == "rid-outbound-1"


def test_both_venue_halves_carry_the_pricing_requests_id_even_from_the_fetch_pool(client):
    with responses.RequestsMock() as mock:
        register_venue(mock, VENUE_API, "helsinki")
        response = client.get(PRICE, headers={"X-Request-ID": "price-rid-7"})
        assert response.status_code == 200
        assert sorted(c.request.url.rsplit("/", 1)[1] for c in mock.calls) == ["dynamic", "static"]
        assert {c.request.headers["X-Request-ID"] for c in mock.calls} == {"price-rid-7"}


class Keep(logging.Handler):
    """Log records as Courier's own handler sees them (with their request id)."""

    def __init__(self):
        from services.logs import RequestIdFilter

        super().__init__(logging.INFO)
        self.addFilter(RequestIdFilter())  # what Courier's own handler does
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_a_batch_run_has_its_own_id_on_partner_calls_and_on_its_log_lines(app, live_partner):
    keep = Keep()
    logging.getLogger().addHandler(keep)
    live_partner.fail["/"] = lambda body: 404  # a partner without a ping route: the run logs a warning
    try:
        report = run_offers(app.extensions["courier"].session_factory, live_partner.config(batch=True),
                            RunOptions(str(DATA_DIR / "member_data.csv"), "reference", date(2024, 1, 5), 8))
    finally:
        logging.getLogger().removeHandler(keep)
    run_id = f"run-{report.run.id}"
    assert report.run.status == "succeeded"
    assert {h.get(b"x-request-id") for h in live_partner.headers} == {run_id.encode()}  # ping and batch calls
    lines = [r for r in keep.records if r.name == "courier.offers"]
    assert lines and {r.request_id for r in lines} == {run_id}
    assert request_id_var.get() is None  # the id ends with the run


def test_every_command_has_its_own_id_on_its_log_lines_and_outbound_calls(runner):
    import re

    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        def unavailable(request):  # runs where the command's code runs (its fetch pool too), and logs there
            logging.getLogger("courier.tests").warning("venue API asked", extra={"path": request.path_url})
            return 503, {}, ""

        with responses.RequestsMock() as mock:
            for half in ("static", "dynamic"):
                mock.add_callback(responses.GET, f"{VENUE_API}/venues/ghost/{half}", callback=unavailable)
            result = runner.invoke(args=["seed-venues", "--from-api", "ghost"])
            sent = [c.request.headers["X-Request-ID"] for c in mock.calls]
    finally:
        logging.getLogger().removeHandler(keep)
    assert result.exit_code == 1
    (invocation,) = set(sent)  # one id for every call of the command (retries too), from its fetch pool too
    assert re.fullmatch(r"cli-seed-venues-[0-9a-f]{12}", invocation)
    logged = [r for r in keep.records if r.name == "courier.tests"]
    assert len(logged) == len(sent) and {r.request_id for r in logged} == {invocation}
    assert request_id_var.get() is None  # the id ends with the command
    again = runner.invoke(args=["api-keys", "list"])
    assert again.exit_code == 0
