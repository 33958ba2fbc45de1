"""GET /metrics: Prometheus text, route templates as labels, and the sum over gunicorn's workers."""

from __future__ import annotations

import re

import responses

from tests.conftest import VENUE_API
from tests.live_servers import gunicorn_process, http_get
from tests.pricing_fixtures import doc, register_venue

PRICE = ("/api/v1/delivery-order-price?venue_slug=home-assignment-venue-helsinki&cart_value=1000"
         "&user_lat=60.17094&user_lon=24.93087")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_by_route_template_and_upstream_calls_by_outcome(client):
    before = client.get("/metrics").get_data(as_text=True)
    with responses.RequestsMock() as mock:
        register_venue(mock, VENUE_API, "helsinki")
        assert client.get(PRICE).status_code == 200
    client.get("/api/v1/offer-runs/12345")  # 404: the template is counted, not the id
    client.get("/no/such/path")
    text = client.get("/metrics").get_data(as_text=True)

    def delta(name, **labels):
        return sample(text, name, **labels) - sample(before, name, **labels)

    assert delta("courier_http_requests_total", route="/api/v1/delivery-order-price", method="GET",
                 status="200") == 1
    assert delta("courier_http_requests_total", route="/api/v1/offer-runs/<int:run_id>", method="GET",
                 status="404") == 1
    assert delta("courier_http_requests_total", route="(unmatched)", method="GET", status="404") == 1
    # In the labels: a sample's value (a _created timestamp, 1.796554501234e+09) may hold any digits.
    labels = "".join(line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#"))
    assert "12345" not in labels and "/no/such/path" not in labels and "helsinki" not in labels
    assert delta("courier_http_request_duration_seconds_count", route="/api/v1/delivery-order-price",
                 method="GET") == 1
    assert delta("courier_upstream_calls_total", upstream="venue-api", outcome="ok") == 2  # both halves
    assert delta("courier_venue_cache_events_total", event="misses") == 1
    assert sample(text, "courier_estimate_model_info", version=client.application.extensions["courier.estimate"]
                  .model.version) == 1


def test_upstream_failures_are_counted_by_outcome(client):
    before = client.get("/metrics").get_data(as_text=True)
    with responses.RequestsMock() as mock:
        for half in ("static", "dynamic"):
            mock.get(f"{VENUE_API}/venues/home-assignment-venue-helsinki/{half}", status=404)
        assert client.get(PRICE).status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "courier_upstream_calls_total", upstream="venue-api", outcome="4xx") - sample(
        before, "courier_upstream_calls_total", upstream="venue-api", outcome="4xx") == 2


def test_retries_have_their_own_counter_so_calls_sum_to_calls(client):
    before = client.get("/metrics").get_data(as_text=True)
    with responses.RequestsMock() as mock:
        for half in ("static", "dynamic"):  # each half fails once with a 503, then answers
            url = f"{VENUE_API}/venues/home-assignment-venue-helsinki/{half}"
            mock.get(url, status=503)
            mock.get(url, json=doc("helsinki", half))
        assert client.get(PRICE).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)

    def delta(name, **labels):
        return sample(text, name, **labels) - sample(before, name, **labels)

    assert delta("courier_upstream_retries_total", upstream="venue-api") == 2
    assert delta("courier_upstream_calls_total", upstream="venue-api", outcome="ok") == 2
    assert 'outcome="retried"' not in text
    assert sum(delta("courier_upstream_calls_total", upstream="venue-api", outcome=o)
               for o in ("ok", "4xx", "5xx", "timeout", "unreachable", "invalid")) == 2  # two calls


def test_metrics_are_summed_over_two_gunicorn_workers(db_url, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    metrics_dir = tmp_path / "metrics"
    with gunicorn_process(db_url, tmp_path, COURIER_METRICS_DIR=str(metrics_dir)) as port:
        sent = 0
        with ThreadPoolExecutor(8) as load:  # concurrent clients: both idle workers take connections
            while sent < 4000:
                assert all(status == 200 for status, _ in load.map(lambda _: http_get(port, "/openapi.json"),
                                                                   range(100)))
                sent += 100
                if len(list(metrics_dir.glob("counter_*.db"))) >= 2:
                    break
        writers = {p.name for p in metrics_dir.glob("counter_*.db")}
        assert len(writers) == 2, f"both workers should have counted: {sorted(writers)}"
        status, text = http_get(port, "/metrics")
        assert status == 200
        # Every request answered, whichever worker answered it: the total is the sum of both files.
        # (Not /healthz: the start-up probe may count one more when a slow first answer is retried.)
        assert sample(text, "courier_http_requests_total", route="/openapi.json", method="GET",
                      status="200") == sent


def test_an_offers_run_from_the_command_line_reaches_the_servers_metrics(db_url, tmp_path):
    """With COURIER_METRICS_DIR shared, what `flask run-offers` counted is in the folder gunicorn's
    /metrics sums (the README's run-failure alert needs it). A run whose partner is down: fast."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from config import DATA_DIR
    from tests.live_servers import ROOT, free_port

    folder = tmp_path / "metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COURIER_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(COURIER_DATABASE_URL=db_url, COURIER_METRICS_DIR=str(folder), COURIER_LOG_LEVEL="WARNING",
               COURIER_SERVICE_URL=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    run = subprocess.run([str(Path(sys.executable).with_name("flask")), "--app", "wsgi", "run-offers", "--input",
                          str(DATA_DIR / "member_data.csv")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and "failed" in run.stdout, run.stdout + run.stderr
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))  # what /metrics does under gunicorn
    assert sample(generate_latest(registry).decode(), "courier_offer_runs_total", status="failed") == 1


def test_offers_runs_and_real_time_offers_are_counted(client, app, live_partner):
    from datetime import date

    from config import DATA_DIR
    from services.offers.runs.lifecycle import RunOptions
    from services.offers.runs.local import run_offers
    from tests.offers_fixtures import partner_over_http, route_to_app

    partner_over_http(app)  # the partner's calls are counted too
    before = client.get("/metrics").get_data(as_text=True)
    run_offers(app.extensions["courier"].session_factory, live_partner.config(batch=True),
               RunOptions(str(DATA_DIR / "member_data.csv"), "reference", date(2024, 1, 5), 8))
    with responses.RequestsMock() as mock:
        route_to_app(mock, app)
        ok = client.post("/api/v1/offers", json={"member_id": "m1", "as_of": "2024-01-05", "transactions": [
            {"ts": "2023-12-10 11:24:18", "type": "gift", "points": 9600, "revenue_usd": 32.0}]})
    assert ok.status_code == 200
    after = client.get("/metrics").get_data(as_text=True)

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("courier_offer_runs_total", status="succeeded") == 1
    assert delta("courier_offer_members_total", outcome="scored") == 890
    assert delta("courier_offer_members_total", outcome="skipped") == 100
    assert delta("courier_offer_step_items_total", step="ats") == 890
    assert delta("courier_offer_step_seconds_total", step="features") > 0
    assert delta("courier_realtime_offers_total", outcome="ok") == 1
    # no member ids, slugs or paths as label values
    assert "m1" not in re.findall(r'"([^"]*)"', after)


def test_metrics_show_each_gunicorn_process_and_how_many_workers_are_busy(db_url, tmp_path):
    """What an autoscaler and an operator read: every worker's RSS, CPU and fds (multiprocess mode
    drops prometheus_client's own process metrics), workers serving, and requests in flight. One
    price request is held at the upstream (an event, not a time window) while another worker
    answers the scrape: two in flight, the held one and the scrape itself."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from bench.venue_standin import StandInServer

    arrived, release = threading.Event(), threading.Event()

    def hold(_path: str) -> None:
        arrived.set()
        release.wait(30)

    with StandInServer() as standin, ThreadPoolExecutor(1) as client:
        standin.app.on_request = hold
        with gunicorn_process(db_url, tmp_path, COURIER_METRICS_DIR=str(tmp_path / "metrics"),
                              COURIER_VENUE_API_URL=standin.url, COURIER_VENUE_API_READ_TIMEOUT_S="30",
                              COURIER_VENUE_API_DEADLINE_S="30") as port:
            held = client.submit(http_get, port, PRICE, 30)
            assert arrived.wait(30)
            status, busy = http_get(port, "/metrics")
            release.set()
            assert held.result()[0] == 200
            _, idle = http_get(port, "/metrics")
            processes = re.findall(r'^courier_process_resident_memory_bytes\{pid="(\d+)",role="(\w+)"\} (\S+)$',
                                   busy, re.MULTILINE)
            parents = {pid: _parent_of(pid) for pid, _, _ in processes}  # while they live
    assert status == 200
    assert sample(busy, "courier_workers") == 2
    assert sample(busy, "courier_http_requests_in_flight") == 2
    assert sample(idle, "courier_http_requests_in_flight") == 1

    assert sorted(role for _, role, _ in processes) == ["master", "worker", "worker"], processes
    master = next(pid for pid, role, _ in processes if role == "master")
    for pid, role, rss in processes:
        assert float(rss) > 10e6, (pid, role, rss)  # a Python process with Flask loaded
        assert sample(busy, "courier_process_open_fds", pid=pid) > 2
        assert sample(busy, "courier_process_cpu_seconds_total", pid=pid) > 0
        if role == "worker":
            assert parents[pid] == master  # gunicorn's workers, not any process


def _parent_of(pid: str) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[1]


def test_outside_gunicorn_metrics_describe_the_process_itself(client):
    import os

    text = client.get("/metrics").get_data(as_text=True)
    assert sample(text, "courier_process_resident_memory_bytes", role="main", pid=str(os.getpid())) > 10e6
    assert sample(text, "courier_http_requests_in_flight") == 1  # this scrape


def test_the_real_time_offers_help_names_the_outcomes_the_code_counts():
    import re
    from pathlib import Path

    from services.metrics import metrics

    source = (Path(__file__).resolve().parents[2] / "services/offers/realtime.py").read_text()
    counted = set(re.findall(r'labels\("([a-z_]+)"\)', source)) | set(re.findall(r'"([a-z_]+)" if exc', source)) \
        | set(re.findall(r'else "([a-z_]+)"', source))
    assert counted >= {"ok", "partner_error", "invalid", "not_scorable"}
    assert all(outcome in metrics().realtime_offers._documentation for outcome in counted)
