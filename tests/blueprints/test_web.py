"""The web view's sessions, forms and headers (blueprints/web.py), with Flask's test client.

A real browser runs the whole flow (upload, watch, report, export) in
tests/blueprints/test_web_browser.py.
"""

import io
import re
from datetime import date

import pytest

from config import DATA_DIR
from services.auth.api_keys import Scope, revoke_key
from services.offers.runs.recording import create_run
from services.offers.statuses import RunStatus
from tests.auth_fixtures import new_key
from tests.blueprints.test_offer_runs import record_starts


@pytest.fixture
def app_config(app_config, tmp_path):
    return {**app_config, "OFFERS_UPLOAD_DIR": str(tmp_path / "uploads"), "SECRET_KEY": "test-signing-key"}


def csrf(page) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)


def signed_in(app, *scopes, **kwargs):
    browser = app.test_client()
    key = new_key(app, *scopes)
    token = csrf(browser.get("/sign-in"))
    answer = browser.post("/sign-in", data={"api_key": key, "csrf_token": token, **kwargs})
    assert answer.status_code == 303, answer.get_data(as_text=True)
    return browser, key


def a_run(app, status=RunStatus.SUCCEEDED):
    with app.extensions["courier"].session() as session, session.begin():
        run = create_run(session, partner="reference", input_path="/in/members.csv", input_sha256="0" * 64,
                         as_of=date(2024, 1, 5), concurrency=4)
        run.status = status.value
        return run.id


def test_pages_need_a_sign_in_and_come_back_after_it(app):
    browser = app.test_client()
    answer = browser.get("/runs/7?x=1")
    assert answer.status_code == 302 and answer.headers["Location"] == "/sign-in?next=/runs/7?x%3D1"
    page = browser.get("/sign-in?next=/runs")
    key = new_key(app, Scope.RUNS_READ)
    signed = browser.post("/sign-in", data={"api_key": key, "csrf_token": csrf(page), "next": "/runs"})
    assert signed.status_code == 303 and signed.headers["Location"] == "/runs"
    assert browser.get("/runs").status_code == 200


def test_the_session_cookie_is_httponly_samesite_strict_and_holds_no_key(app):
    browser = app.test_client()
    page = browser.get("/sign-in")
    key = new_key(app, Scope.RUNS_READ)
    answer = browser.post("/sign-in", data={"api_key": key, "csrf_token": csrf(page)})
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "courier_session=" in cookie
    assert key.split("_")[-1] not in cookie  # the secret never leaves the form post


def test_a_wrong_key_is_refused_on_the_page(app):
    browser = app.test_client()
    page = browser.get("/sign-in")
    answer = browser.post("/sign-in", data={"api_key": "courier_000000000000_" + "x" * 43, "csrf_token": csrf(page)})
    assert answer.status_code == 401 and "not valid" in answer.get_data(as_text=True)
    assert browser.get("/runs").status_code == 302


def test_every_form_needs_the_sessions_csrf_token(app):
    browser = app.test_client()
    browser.get("/sign-in")
    key = new_key(app, Scope.RUNS_READ, Scope.RUNS_WRITE)
    assert browser.post("/sign-in", data={"api_key": key}).status_code == 400
    browser, _ = signed_in(app, Scope.RUNS_READ, Scope.RUNS_WRITE)
    run_id = a_run(app, RunStatus.RUNNING)
    for path in (f"/runs/{run_id}/cancel", f"/runs/{run_id}/resume", "/sign-out", "/runs"):
        refused = browser.post(path, data={"csrf_token": "forged"})
        assert refused.status_code == 400 and "did not come from this site" in refused.get_data(as_text=True), path
    assert browser.get("/runs").status_code == 200  # still signed in: the forged sign-out did nothing


def test_revoking_the_key_ends_its_sessions(app):
    browser, key = signed_in(app, Scope.RUNS_READ)
    assert browser.get("/runs").status_code == 200
    with app.extensions["courier"].session() as session, session.begin():
        revoke_key(session, key.split("_")[1])
    assert browser.get("/runs").status_code == 302


def test_sign_out_ends_the_session(app):
    browser, _ = signed_in(app, Scope.RUNS_READ)
    page = browser.get("/runs")
    assert browser.post("/sign-out", data={"csrf_token": csrf(page)}).status_code == 303
    assert browser.get("/runs").status_code == 302


def test_a_page_needing_another_scope_says_which(app):
    browser, _ = signed_in(app, Scope.RUNS_READ)
    answer = browser.get("/runs/new")
    assert answer.status_code == 403 and "runs:write" in answer.get_data(as_text=True)
    assert "Start a run" not in browser.get("/runs").get_data(as_text=True)


def test_sign_in_never_redirects_off_the_site(app):
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil"):
        browser, _ = signed_in(app, Scope.RUNS_READ, next=target)
        page = browser.get("/sign-in", query_string={"next": target})
        assert 'value="https://' not in page.get_data(as_text=True) and 'value="//' not in page.get_data(as_text=True)


def test_pages_have_a_strict_content_security_policy_and_load_nothing_foreign(app):
    browser, _ = signed_in(app, Scope.RUNS_READ)
    a_run(app)
    for path in ("/sign-in", "/runs", "/runs/1"):
        answer = browser.get(path)
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'self'")
        assert answer.headers["X-Frame-Options"] == "DENY" and answer.headers["Cache-Control"] == "no-store"
        html = answer.get_data(as_text=True)
        assert "<script" not in html and "http://" not in html and "https://" not in html
    assert browser.get("/web/static/web.css").status_code == 200


def test_the_runs_list_and_a_run_page_show_the_record_with_report_and_export_links(app):
    browser, _ = signed_in(app, Scope.RUNS_READ)
    run_id = a_run(app)
    listing = browser.get("/runs").get_data(as_text=True)
    assert f'href="/runs/{run_id}"' in listing and "succeeded" in listing
    page = browser.get(f"/runs/{run_id}").get_data(as_text=True)
    assert f'href="/runs/{run_id}/report"' in page and f'href="/runs/{run_id}/export.csv"' in page
    assert "members.csv" in page and "0 read, 0 rejected" in page
    running = browser.get(f"/runs/{a_run(app, RunStatus.RUNNING)}").get_data(as_text=True)
    assert "counted when the run ends" in running  # rows are counted by the scan, recorded at the end
    report = browser.get(f"/runs/{run_id}/report")
    assert report.status_code == 200 and report.mimetype == "text/html" and "img-src data:" in report.headers[
        "Content-Security-Policy"]
    export = browser.get(f"/runs/{run_id}/export.csv")
    assert export.status_code == 200 and export.mimetype == "text/csv"
    assert browser.get("/runs/999").status_code == 404


def test_the_api_takes_keys_in_headers_only_never_the_session_cookie(app):
    browser, _ = signed_in(app, Scope.RUNS_READ)
    assert browser.get("/api/v1/offer-runs").status_code == 401


def test_uploading_from_the_form_starts_the_same_run_as_the_api(app):
    starter = record_starts(app)
    browser, _ = signed_in(app, Scope.RUNS_READ, Scope.RUNS_WRITE)
    form = browser.get("/runs/new")
    answer = browser.post("/runs", data={"csrf_token": csrf(form), "as_of": "2024-01-05", "scoring": "batch",
                                         "chunk_size": "", "partner": "reference",
                                         "file": (io.BytesIO((DATA_DIR / "member_data.csv").read_bytes()),
                                                  "members.csv")}, content_type="multipart/form-data")
    assert answer.status_code == 303 and answer.headers["Location"] == "/runs/1" and starter.started == [1]
    record = app.test_client().get("/api/v1/offer-runs/1", headers={"Authorization": f"Bearer {new_key(app)}"})
    assert record.get_json()["input_file"] == "members.csv" and record.get_json()["source"] == "api"
    bad = browser.post("/runs", data={"csrf_token": csrf(form), "file": (io.BytesIO(b"a,b\n1,2\n"), "x.csv")},
                       content_type="multipart/form-data")
    assert bad.status_code == 400 and "unexpected header" in bad.get_data(as_text=True)


def test_the_form_takes_uploads_up_to_the_upload_cap_not_the_body_limit(app_config, tmp_path):
    from app import create_app

    sample = (DATA_DIR / "member_data.csv").read_bytes()  # 212,520 bytes
    app = create_app({**app_config, "MAX_CONTENT_LENGTH": 100_000, "OFFERS_UPLOAD_MAX_BYTES": 300_000})
    starter = record_starts(app)
    browser, _ = signed_in(app, Scope.RUNS_READ, Scope.RUNS_WRITE)
    token = csrf(browser.get("/runs/new"))

    def post(body: bytes):
        return browser.post("/runs", data={"csrf_token": token, "as_of": "2024-01-05",
                                           "file": (io.BytesIO(body), "members.csv")},
                            content_type="multipart/form-data")

    accepted = post(sample)
    assert accepted.status_code == 303 and starter.started == [1]
    too_large = post(sample + sample[sample.index(b"\n") + 1:])  # 425 kB, over the 300 kB cap
    page = too_large.get_data(as_text=True)
    assert too_large.status_code == 413 and "COURIER_OFFERS_UPLOAD_MAX_BYTES" in page and 'id="file"' in page
    assert starter.started == [1] and len(list((tmp_path / "uploads").iterdir())) == 1


BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


def test_api_links_opened_in_a_browser_lead_to_the_web_pages(app):
    run_id = a_run(app)
    browser = app.test_client()
    for api, page in ((f"/api/v1/offer-runs/{run_id}/report", f"/runs/{run_id}/report"),
                      (f"/api/v1/offer-runs/{run_id}/export.csv", f"/runs/{run_id}/export.csv"),
                      (f"/api/v1/offer-runs/{run_id}", f"/runs/{run_id}")):
        opened = browser.get(api, headers={"Accept": BROWSER_ACCEPT})
        assert opened.status_code == 303 and opened.headers["Location"] == page, api
        assert browser.get(page).headers["Location"] == f"/sign-in?next={page}"  # then signed in, and back
        machine = browser.get(api)  # curl's */*: the API's answer, unchanged
        assert machine.status_code == 401 and machine.get_json()["code"] == "unauthorized"
    wrong_key = browser.get(f"/api/v1/offer-runs/{run_id}/report",
                            headers={"Accept": BROWSER_ACCEPT, "Authorization": "Bearer courier_nope"})
    assert wrong_key.status_code == 401  # a client that sent a key is told about its key
    other = browser.get("/api/v1/offer-runs", headers={"Accept": BROWSER_ACCEPT})
    assert other.status_code == 401  # only the addresses that have a page


def test_api_requests_carry_no_session(app):
    answer = app.test_client().get("/healthz")
    assert "Set-Cookie" not in answer.headers and "Vary" not in answer.headers


def test_cancel_and_resume_from_the_run_page(app):
    starter = record_starts(app)
    browser, _ = signed_in(app, Scope.RUNS_READ, Scope.RUNS_WRITE)
    form = browser.get("/runs/new")
    browser.post("/runs", data={"csrf_token": csrf(form), "as_of": "2024-01-05",
                                "file": (io.BytesIO((DATA_DIR / "member_data.csv").read_bytes()), "members.csv")},
                 content_type="multipart/form-data")
    page = browser.get("/runs/1")
    assert 'id="cancel"' in page.get_data(as_text=True) and 'id="resume"' not in page.get_data(as_text=True)
    assert browser.post("/runs/1/cancel", data={"csrf_token": csrf(page)}).headers["Location"] == "/runs/1"
    page = browser.get("/runs/1")
    assert 'id="status">interrupted' in page.get_data(as_text=True) and 'id="resume"' in page.get_data(as_text=True)
    browser.post("/runs/1/resume", data={"csrf_token": csrf(page)})
    assert 'id="status">queued' in browser.get("/runs/1").get_data(as_text=True) and starter.started == [1, 1]


def test_starting_runs_from_the_form_shares_the_keys_rate_limit(app_config):
    from app import create_app

    app = create_app({**app_config, "RATE_LIMIT_RUN_SUBMISSIONS": "1/minute"})
    browser, key = signed_in(app, Scope.RUNS_READ, Scope.RUNS_WRITE)
    page = browser.get("/runs/new")
    assert browser.post("/runs/1/cancel", data={"csrf_token": csrf(page)}).status_code == 404  # no such run
    limited = browser.post("/runs/1/cancel", data={"csrf_token": csrf(page)})
    assert limited.status_code == 429 and "Try again in" in limited.get_data(as_text=True)
    assert int(limited.headers["Retry-After"]) >= 1
    api = app.test_client().post("/api/v1/offer-runs/1/cancel", headers={"Authorization": f"Bearer {key}"})
    assert api.status_code == 429  # one budget per key, whichever way the key is used
    app.extensions["courier"].close()
