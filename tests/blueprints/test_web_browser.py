"""The web view in a real browser: Debian's chromium, driven by Selenium through chromium-driver.

A person signs in with a key, uploads the bundled sample, watches the run finish (the page
refreshes itself, no script), opens the report and downloads the export, against a real gunicorn,
a coordinator worker and a chunk worker on Redis and PostgreSQL, and the reference partner.

Needs chromium and chromium-driver (`apt-get install chromium chromium-driver`; `.ci/run` installs
them), COURIER_TEST_POSTGRES_URL and redis-server; skips saying which is missing. Selenium is
pointed at /usr/bin/chromedriver: its own driver manager would try a download. Set
COURIER_SCREENSHOTS_DIR to keep the screenshots it takes at each step.
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from config import DATA_DIR
from services.auth.api_keys import Scope, create_key
from tests.distributed_fixtures import (
    CeleryWorker,
    MissingComponent,
    RedisServer,
    coordinator_worker,
    worker_settings,
)
from tests.live_servers import gunicorn_process
from tests.offers_fixtures import fresh_postgres, postgres_in_schema

PG_URL = postgres_in_schema(os.environ.get("COURIER_TEST_POSTGRES_URL"), "web_browser")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.skipif(not PG_URL, reason="COURIER_TEST_POSTGRES_URL not set"),
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                       reason="chromium and chromium-driver are not installed "
                              "(apt-get install chromium chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
pytest.importorskip("celery", reason="the distributed extra is not installed")


@pytest.fixture
def stack(tmp_path, module_partner):
    try:
        redis = RedisServer(tmp_path)
    except MissingComponent as exc:
        pytest.skip(str(exc))
    fresh_postgres(PG_URL)
    env = worker_settings(PG_URL, redis, module_partner, OFFERS_UPLOAD_DIR=str(tmp_path / "uploads"),
                          SECRET_KEY="browser-test", OFFERS_DISTRIBUTED_STALL_S="60")
    workers = [coordinator_worker(env, tmp_path / "runs.log"), CeleryWorker("chunks", env, tmp_path / "chunks.log")]
    try:
        with gunicorn_process(PG_URL, tmp_path, workers=2, **env) as port:
            yield f"http://127.0.0.1:{port}"
    finally:
        for worker in workers:
            worker.close()
        redis.close()


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def shot(driver, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("COURIER_SCREENSHOTS_DIR"):
        Path(os.environ["COURIER_SCREENSHOTS_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["COURIER_SCREENSHOTS_DIR"]) / path.name)


def new_key() -> str:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(PG_URL)
    with Session(engine) as session, session.begin():
        key = create_key(session, "analyst", {Scope.RUNS_READ, Scope.RUNS_WRITE}).key
    engine.dispose()
    return key


def arrives(browser, url: str, timeout: float = 30) -> None:
    """Wait for a click's navigation to land on ``url`` (a click returns before the next page loads)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, timeout).until(expected_conditions.url_to_be(url))
    except TimeoutException:
        raise AssertionError(f"still at {browser.current_url}:\n{browser.page_source[:3000]}") from None


def test_a_person_signs_in_uploads_watches_the_run_and_reads_its_results(stack, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(stack + "/runs")
    assert "/sign-in" in browser.current_url  # not signed in: sent to sign in, and back after
    shot(browser, tmp_path, "1-sign-in")
    browser.find_element(By.ID, "api_key").send_keys(new_key())
    browser.find_element(By.ID, "sign-in").click()
    arrives(browser, stack + "/runs")
    assert "No runs yet" in browser.page_source

    browser.find_element(By.LINK_TEXT, "Start a run").click()
    arrives(browser, stack + "/runs/new")
    browser.find_element(By.ID, "file").send_keys(str(DATA_DIR / "member_data.csv"))
    as_of = browser.find_element(By.ID, "as_of")
    browser.execute_script("arguments[0].value = '2024-01-05'", as_of)  # the date picker's locale varies
    shot(browser, tmp_path, "2-start-a-run")
    browser.find_element(By.ID, "start").click()
    arrives(browser, stack + "/runs/1")  # the upload, then the redirect to the run's page

    deadline = time.monotonic() + 90
    while (status := browser.find_element(By.ID, "status").text) not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
        browser.find_element(By.TAG_NAME, "h1")  # the page refreshes itself every 3 s (meta refresh)
    shot(browser, tmp_path, "3-run-succeeded")
    assert status == "succeeded"
    page = browser.page_source
    assert "890 scored, 100 skipped, 0 failed" in page and "member_data.csv" in page

    browser.find_element(By.ID, "export").click()
    deadline = time.monotonic() + 30
    while not (done := [p for p in browser.downloads.iterdir() if p.suffix == ".csv"]):
        assert time.monotonic() < deadline, list(browser.downloads.iterdir())
        time.sleep(0.2)
    lines = done[0].read_text().splitlines()
    assert done[0].name == "offer-run-1.csv" and len(lines) == 991 and lines[0].startswith("member_id,")

    browser.find_element(By.ID, "report").click()
    arrives(browser, stack + "/runs/1/report")
    assert browser.title == "Offers run 1: succeeded"
    assert browser.find_elements(By.TAG_NAME, "svg")  # the charts, inline
    shot(browser, tmp_path, "4-report")

    browser.get(stack + "/runs")
    assert "succeeded" in browser.find_element(By.ID, "runs").text
    shot(browser, tmp_path, "5-runs")
    browser.find_element(By.ID, "sign-out").click()
    arrives(browser, stack + "/sign-in")
    browser.get(stack + "/runs/1/report")
    assert "/sign-in" in browser.current_url  # signed out: the report link needs a sign-in again
    browser.get(stack + "/api/v1/offer-runs/1/report")  # the API's address, as in an old link
    assert browser.current_url == stack + "/sign-in?next=/runs/1/report"
