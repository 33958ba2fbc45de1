"""Offers over REST: the real-time offer, browsing runs with stable pagination, streamed CSV export."""

import csv
import io
import json
import threading
from datetime import UTC, date, datetime

import pytest
import requests
import responses
from openapi_spec_validator import validate

from config import DATA_DIR
from services.offers.runs.lifecycle import RunOptions
from services.offers.runs.local import run_offers
from services.tables import OfferRun
from tests.offers_fixtures import REFERENCE_BASE, partner_over_http, route_to_app

SAMPLE = DATA_DIR / "member_data.csv"
URL = "/api/v1/offers"


def sample_transactions(member_id):
    with open(SAMPLE, newline="") as handle:
        return [{"ts": r["lastTransactionUtcTs"], "type": r["lastTransactionType"],
                 "points": float(r["lastTransactionPointsBought"]),
                 "revenue_usd": float(r["lastTransactionRevenueUSD"])}
                for r in csv.DictReader(handle) if r["memberId"] == member_id and r["lastTransactionType"]]


@pytest.fixture(autouse=True)
def over_http(app):
    """These tests exercise the HTTP client's faults; the in-process path has its own test below."""
    partner_over_http(app)


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def recorded_run(app, live_partner):
    """The bundled sample scored by the batch pipeline (as `flask run-offers` does)."""
    report = run_offers(app.extensions["courier"].session_factory, live_partner.config(),
                        RunOptions(str(SAMPLE), "reference", date(2024, 1, 5), 8))
    return report.run.id


def test_realtime_offer_equals_what_the_batch_run_recorded(client, app, mock, recorded_run):
    route_to_app(mock, app)
    for member_id in ("F44DBBBC", "B9EF12A3", "353ACD20", "007C2541"):
        response = client.post(URL, json={"member_id": member_id, "transactions": sample_transactions(member_id),
                                          "as_of": "2024-01-05"})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        recorded = client.get(f"/api/v1/offer-runs/{recorded_run}/results/{member_id}").get_json()
        assert body["member_id"] == member_id and body["partner"] == "reference"
        assert list(body["features"]) == [k for k in recorded if k.isupper()]
        for name, value in body["features"].items():
            assert value == pytest.approx(recorded[name], rel=1e-12, abs=1e-12)
        assert body["ats_prediction"] == pytest.approx(recorded["ats_prediction"], rel=1e-12)
        assert body["resp_prediction"] == pytest.approx(recorded["resp_prediction"], rel=1e-12)
        assert body["offer"] == recorded["offer"]
        assert set(body["latency_ms"]) == {"ats", "resp", "offer", "total"}


def test_ats_and_resp_are_called_in_parallel(client, app, mock):
    # ATS and RESP each wait at the partner until the other arrives: called one after the other,
    # the first would break the barrier (its timeout) and the offer would fail.
    both_calls = threading.Barrier(2, timeout=5)

    def meet(body):
        both_calls.wait()

    route_to_app(mock, app, fail={"/ml/ats/predict": meet, "/ml/resp/predict": meet})
    response = client.post(URL, json={"member_id": "F44DBBBC", "transactions": sample_transactions("F44DBBBC"),
                                      "as_of": "2024-01-05"})
    assert response.status_code == 200
    assert not both_calls.broken


def test_validation_names_each_field_and_transaction_index(client):
    response = client.post(URL, json={"member_id": "", "transactions": [
        {"ts": "2023-12-10 11:24:18", "type": "gift", "points": 100, "revenue_usd": 1.0},
        {"ts": "2023-12-32 11:24:18", "type": "steal", "points": "many", "revenue_usd": float("nan")},
        {"type": "buy", "points": True, "revenue_usd": 1}], "as_of": "05/01/2024"})
    assert response.status_code == 400
    details = response.get_json()["details"]
    assert set(details) == {"member_id", "transactions", "as_of"}
    assert set(details["transactions"]) == {"1", "2"}
    assert set(details["transactions"]["1"]) == {"ts", "type", "points", "revenue_usd"}
    assert set(details["transactions"]["2"]) == {"ts", "points"}


def test_missing_body_fields_and_bad_json(client):
    assert set(client.post(URL, json={}).get_json()["details"]) == {"member_id", "transactions"}
    assert client.post(URL, data="{", content_type="application/json").status_code == 400
    assert client.post(URL, json={"member_id": "A", "transactions": "none"}).status_code == 400


def test_no_transactions_is_422(client):
    response = client.post(URL, json={"member_id": "A", "transactions": []})
    assert response.status_code == 422 and response.get_json()["code"] == "no_transactions"


def test_transactions_after_as_of_are_422(client, app, mock):
    route_to_app(mock, app)
    response = client.post(URL, json={"member_id": "A", "as_of": "2020-01-01", "transactions": [
        {"ts": "2023-12-10 11:24:18", "type": "gift", "points": 100, "revenue_usd": 1.0}]})
    assert response.status_code == 422 and response.get_json()["code"] == "last_transaction_after_as_of"


BEFORE_YEAR_ONE = {"ts": "0001-01-01 00:00:00+05:00", "type": "buy", "points": 1, "revenue_usd": 1.0}
GIFT = {"ts": "2023-12-10 11:24:18", "type": "gift", "points": 100, "revenue_usd": 1.0}


@pytest.mark.parametrize(("code", "transactions", "as_of"), [
    ("last_transaction_after_as_of", [GIFT], "2023-12-01"),
    ("invalid_transactions", [BEFORE_YEAR_ONE, GIFT], "2024-01-05"),
    ("no_valid_transactions", [BEFORE_YEAR_ONE], "2024-01-05"),
])
def test_each_documented_refusal_of_a_well_formed_offer_request_is_what_the_service_answers(
        client, code, transactions, as_of):
    response = client.post(URL, json={"member_id": "F44DBBBC", "as_of": as_of, "transactions": transactions})
    declared = client.get("/openapi.json").get_json()["paths"]["/api/v1/offers"]["post"]["responses"]["422"]
    assert code in declared["x-refusals"]
    assert response.get_json() == declared["content"]["application/json"]["examples"][code]["value"]


def test_points_and_revenue_beyond_the_published_bound_are_400_naming_the_transaction(client):
    too_big = {"ts": "2023-12-10 11:24:18", "type": "buy", "points": 1.9e68, "revenue_usd": -2e9}
    response = client.post(URL, json={"member_id": "A", "transactions": [too_big]})
    assert response.status_code == 400
    assert set(response.get_json()["details"]["transactions"]["0"]) == {"points", "revenue_usd"}


def test_too_many_transactions_is_400(client, app):
    app.config["OFFERS_MAX_TRANSACTIONS"] = 3
    tx = {"ts": "2023-12-10 11:24:18", "type": "gift", "points": 100, "revenue_usd": 1.0}
    response = client.post(URL, json={"member_id": "A", "transactions": [tx] * 4})
    assert response.status_code == 400 and "at most 3" in response.get_json()["details"]["transactions"][0]


def test_unknown_partner_is_404(client):
    response = client.post(URL, json={"member_id": "A", "partner": "acme",
                                      "transactions": sample_transactions("F44DBBBC")})
    assert response.status_code == 404 and response.get_json()["code"] == "partner_not_found"


def test_partner_down_after_retries_is_503(client, app, mock):
    calls = route_to_app(mock, app, fail={"/ml/ats/predict": lambda body: 503})
    response = client.post(URL, json={"member_id": "F44DBBBC", "transactions": sample_transactions("F44DBBBC"),
                                      "as_of": "2024-01-05"})
    assert response.status_code == 503 and response.get_json()["code"] == "upstream_unavailable"
    assert "Retry-After" in response.headers
    assert len([c for c in calls if c[0] == "/ml/ats/predict"]) == 3  # 1 + 2 retries


@pytest.mark.parametrize(
    ("register", "status", "code"),
    [
        (lambda m: m.post(REFERENCE_BASE + "/ml/resp/predict", body=requests.exceptions.ReadTimeout()), 504,
         "upstream_timeout"),
        # Every attempt (1 + 2 retries: the partner is idempotent) answers a body that is not JSON.
        (lambda m: [m.post(REFERENCE_BASE + "/offer/assign", body="{oops", content_type="application/json")
                    for _ in range(3)], 502, "upstream_invalid"),
    ],
)
def test_partner_failures_map_to_5xx(client, app, mock, register, status, code):
    register(mock)
    route_to_app(mock, app)  # the other endpoints answer normally
    response = client.post(URL, json={"member_id": "F44DBBBC", "transactions": sample_transactions("F44DBBBC"),
                                      "as_of": "2024-01-05"})
    assert response.status_code == status and response.get_json()["code"] == code


def test_one_malformed_partner_answer_is_retried_and_the_offer_still_answers(client, app, mock):
    mock.post(REFERENCE_BASE + "/offer/assign", body="{oops", content_type="application/json")
    route_to_app(mock, app)  # the retry reaches the real reference partner
    response = client.post(URL, json={"member_id": "F44DBBBC", "transactions": sample_transactions("F44DBBBC"),
                                      "as_of": "2024-01-05"})
    assert response.status_code == 200, response.get_json()
    assert [c.request.url for c in mock.calls].count(REFERENCE_BASE + "/offer/assign") == 2


def _add_runs(app, n):
    with app.extensions["courier"].session() as session, session.begin():
        for i in range(n):
            session.add(OfferRun(partner="reference", input_path=f"in{i}.csv", input_sha256="0" * 64,
                                 as_of=date(2024, 1, 5), status="succeeded", concurrency=1, offers={}, rejected={},
                                 step_metrics={}))


def test_runs_are_listed_newest_first_with_stable_cursors(client, app):
    _add_runs(app, 5)
    first = client.get("/api/v1/offer-runs?limit=2").get_json()
    ids = [r["id"] for r in first["items"]]
    _add_runs(app, 1)  # a new run arriving between pages must not shift the pages
    second = client.get(f"/api/v1/offer-runs?limit=2&cursor={first['next_cursor']}").get_json()
    third = client.get(f"/api/v1/offer-runs?limit=2&cursor={second['next_cursor']}").get_json()
    ids += [r["id"] for r in second["items"]] + [r["id"] for r in third["items"]]
    assert ids == [5, 4, 3, 2, 1] and third["next_cursor"] is None


def test_run_detail_and_unknown_ids(client, recorded_run):
    run = client.get(f"/api/v1/offer-runs/{recorded_run}").get_json()
    assert run["members_scored"] == 890 and set(run["step_metrics"]) >= {"ats", "resp", "offer"}
    assert client.get("/api/v1/offer-runs/424242").status_code == 404
    assert client.get("/api/v1/offer-runs/424242/results").status_code == 404
    assert client.get("/api/v1/offer-runs/424242/export.csv").status_code == 404
    assert client.get(f"/api/v1/offer-runs/{2**64}").status_code == 404  # beyond any database integer
    assert client.get(f"/api/v1/offer-runs/{2**70}/export.csv").status_code == 404
    missing = client.get(f"/api/v1/offer-runs/{recorded_run}/results/NOBODY")
    assert missing.status_code == 404 and missing.get_json()["code"] == "result_not_found"


def test_results_pages_cover_every_member_once_with_filters(client, recorded_run):
    seen, cursor = [], None
    while True:
        query = "?limit=97&status=scored&offer=OFFER_2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/api/v1/offer-runs/{recorded_run}/results{query}").get_json()
        seen += [r["member_id"] for r in page["items"]]
        assert all(r["offer"] == "OFFER_2" and r["status"] == "scored" for r in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    run = client.get(f"/api/v1/offer-runs/{recorded_run}").get_json()
    assert len(seen) == len(set(seen)) == run["offers"]["OFFER_2"] and seen == sorted(seen)


@pytest.mark.parametrize(("query", "code"), [
    ("limit=0", "invalid_request"), ("limit=501", "invalid_request"), ("limit=x", "invalid_request"),
    ("status=great", "invalid_request"), ("limit=1&limit=2", "invalid_request"), ("offer=", "invalid_request"),
    ("cursor=%%%", "invalid_cursor"), ("cursor=eyJhIjogMX0", "invalid_cursor"),  # {"a": 1}: well-formed, not ours
])
def test_bad_list_parameters_are_400(client, app, query, code):
    _add_runs(app, 1)
    response = client.get(f"/api/v1/offer-runs/1/results?{query}")
    assert response.status_code == 400 and response.get_json()["code"] == code


def test_export_csv_is_streamed_and_complete(client, recorded_run):
    response = client.get(f"/api/v1/offer-runs/{recorded_run}/export.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.is_streamed
    rows = list(csv.DictReader(response.get_data(as_text=True).splitlines()))
    assert len(rows) == 990 and sum(r["status"] == "scored" for r in rows) == 890
    assert rows[0]["member_id"] < rows[-1]["member_id"]


def test_run_report_is_one_self_contained_html_page(client, anonymous, recorded_run):
    response = client.get(f"/api/v1/offer-runs/{recorded_run}/report")
    assert response.status_code == 200 and response.mimetype == "text/html"
    # the page needs nothing from anywhere: a browser may forbid everything else
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    page = response.get_data(as_text=True)
    assert f"<h1>Offers run {recorded_run} " in page and page.count("<svg") >= 5
    assert "<tr><td>890</td>" not in page  # the counts row starts with rows read
    assert "<td>4335</td><td>10</td><td>990</td><td>890</td><td>100</td><td>0</td>" in page
    assert anonymous.get(f"/api/v1/offer-runs/{recorded_run}/report").status_code == 401


@pytest.fixture
def drawn(monkeypatch):
    """The run ids whose report page was drawn, in order (the real drawing still happens)."""
    from services.offers.reports import html as report_html

    calls, real = [], report_html.run_report_html
    monkeypatch.setattr(report_html, "run_report_html", lambda session, run_id: calls.append(run_id) or
                        real(session, run_id))
    return calls


def _change_run(app, run_id, **values):
    from services.tables import OfferRun

    with app.extensions["courier"].session() as session, session.begin():
        for name, value in values.items():
            setattr(session.get(OfferRun, run_id), name, value)


def test_an_ended_runs_report_is_drawn_once_then_revalidated_by_its_etag(client, app, recorded_run, drawn):
    url = f"/api/v1/offer-runs/{recorded_run}/report"
    first = client.get(url)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag and first.headers["Cache-Control"] == "private, no-cache"
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == etag
    assert client.get(url).data == first.data  # another client without the page: the one kept
    assert drawn == [recorded_run]
    # a resume finishes the run again: a new record, a new page
    _change_run(app, recorded_run, finished_at=datetime(2030, 1, 1, tzinfo=UTC))
    changed = client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert drawn == [recorded_run, recorded_run]


def test_a_running_runs_report_is_drawn_every_time_and_never_tagged(client, app, recorded_run, drawn):
    from services.offers.statuses import RunStatus

    _change_run(app, recorded_run, status=RunStatus.RUNNING, finished_at=None)
    url = f"/api/v1/offer-runs/{recorded_run}/report"
    answers = [client.get(url, headers={"If-None-Match": "*"}) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200] and "ETag" not in answers[0].headers
    assert drawn == [recorded_run, recorded_run]


def test_report_of_an_unknown_run_is_404_in_the_envelope(client):
    response = client.get("/api/v1/offer-runs/999/report")
    assert response.status_code == 404
    assert response.get_json() == {"error": "No offer run 999.", "code": "run_not_found", "details": {"run_id": 999}}


def test_openapi_documents_every_offers_route(client):
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    for path in ("/api/v1/offers", "/api/v1/offer-runs", "/api/v1/offer-runs/{run_id}",
                 "/api/v1/offer-runs/{run_id}/results", "/api/v1/offer-runs/{run_id}/results/{member_id}",
                 "/api/v1/offer-runs/{run_id}/export.csv", "/api/v1/offer-runs/{run_id}/report"):
        assert path in spec["paths"]
    post = spec["paths"]["/api/v1/offers"]["post"]
    assert {"200", "400", "404", "422", "502", "503", "504"} <= set(post["responses"])
    assert "OfferRequest" in spec["components"]["schemas"]


def test_empty_query_values_are_checked_as_the_document_says(client, app):
    _add_runs(app, 1)
    refused = client.get("/api/v1/offer-runs/1/results?offer=&cursor=&status=")
    assert refused.status_code == 400 and set(refused.get_json()["details"]) == {"offer", "status"}
    first_page = client.get("/api/v1/offer-runs/1/results?cursor=")  # any string is a cursor's form
    assert first_page.status_code == 200 and first_page.get_json() == {"items": [], "next_cursor": None}


def test_timestamps_with_a_utc_offset_are_accepted_and_converted(client, app, mock):
    route_to_app(mock, app)
    plain = [{"ts": "2023-12-10 11:24:18", "type": "gift", "points": 9600, "revenue_usd": 32.0},
             {"ts": "2024-01-04 23:30:00", "type": "buy", "points": 100, "revenue_usd": 5.0}]
    offset = [{"ts": "2023-12-10T11:24:18Z", "type": "gift", "points": 9600, "revenue_usd": 32.0},
              {"ts": "2024-01-05T01:30:00+02:00", "type": "buy", "points": 100, "revenue_usd": 5.0}]
    answers = [client.post(URL, json={"member_id": "M1", "transactions": t, "as_of": "2024-01-05"}) for t in
               (plain, offset)]
    assert [a.status_code for a in answers] == [200, 200], answers[1].get_json()
    assert answers[0].get_json()["features"] == answers[1].get_json()["features"]
    assert answers[1].get_json()["features"]["DAYS_SINCE_LAST_TRANSACTION"] == 1  # 2024-01-04 in UTC


def test_results_and_realtime_features_keep_the_features_a_registry_adds_beyond_the_standard_eight():
    from blueprints.offers import FeaturesSchema, OfferResultSchema
    from services.offers.features.definitions import STANDARD_FEATURES
    from services.offers.result_shape import RESULT_FIELDS

    result = {f.name: None for f in RESULT_FIELDS} | {"member_id": "M1", "status": "scored", "DAYS_UNTIL_XMAS": 17}
    assert OfferResultSchema().dump(result) == result
    features = {name: 1.5 for name in STANDARD_FEATURES} | {"DAYS_SINCE_LAST_TRANSACTION": 3, "DAYS_UNTIL_XMAS": 17}
    assert FeaturesSchema().dump(features) == features


DANGEROUS_IDS = ["=cmd|' /C calc'!A0", "+SUM(1+1)", "-2+3", "@HYPERLINK(\"http://x\")", "\tTAB", "\rCR"]


@pytest.fixture
def run_with_formula_ids(app):
    from services.offers.runs.recording import MemberOutcome, create_run, insert_outcomes

    with app.extensions["courier"].session() as session, session.begin():
        run = create_run(session, partner="reference", input_path="x.csv", input_sha256="0" * 64,
                         as_of=date(2024, 1, 5), concurrency=1)
        insert_outcomes(session, run.id, [MemberOutcome(member_id=m, status="scored", offer="=OFFER",
                                                        ats_prediction=-1.5) for m in DANGEROUS_IDS])
        return run.id


def test_csv_exports_neutralise_cells_a_spreadsheet_would_run_as_formulas(client, app, run_with_formula_ids,
                                                                            tmp_path):
    from services.offers.runs.recording import write_output
    from services.tables import OfferRun

    rest = client.get(f"/api/v1/offer-runs/{run_with_formula_ids}/export.csv").get_data(as_text=True)
    with app.extensions["courier"].session() as session:
        write_output(session, session.get(OfferRun, run_with_formula_ids), tmp_path / "out.csv")
        write_output(session, session.get(OfferRun, run_with_formula_ids), tmp_path / "out.jsonl")
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as handle:
        written = handle.read()
    for text in (rest, written):
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        assert sorted(r["member_id"] for r in rows) == sorted("'" + m for m in DANGEROUS_IDS)
        assert {r["offer"] for r in rows} == {"'=OFFER"}
        assert {r["ats_prediction"] for r in rows} == {"-1.5"}  # a negative number stays a number
    jsonl = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["member_id"] for r in jsonl) == sorted(DANGEROUS_IDS)  # JSON lines keep the raw value


def test_the_bundled_partner_served_here_is_answered_in_process_never_over_http(app, client, recorded_run):
    """A worker must never wait on a call that only a worker of its own pool can answer (8 concurrent
    offers on 5 sync workers were all 504 after 5 s): the same answers, no HTTP call at all."""
    from capabilities.offers import EXTENSION

    realtime = app.extensions[EXTENSION].realtime
    realtime.own_reference_url = app.config["SERVICE_URL"].rstrip("/") + "/partners/reference"
    realtime.close()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as nothing_registered:
        for member_id in ("F44DBBBC", "B9EF12A3"):
            response = client.post(URL, json={"member_id": member_id, "as_of": "2024-01-05",
                                              "transactions": sample_transactions(member_id)})
            assert response.status_code == 200, response.get_json()
            recorded = client.get(f"/api/v1/offer-runs/{recorded_run}/results/{member_id}").get_json()
            assert response.get_json()["offer"] == recorded["offer"]
            assert response.get_json()["ats_prediction"] == pytest.approx(recorded["ats_prediction"], rel=1e-12)
        assert [c.request.url for c in nothing_registered.calls] == []  # no partner call left the process
