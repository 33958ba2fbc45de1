"""System routes: liveness, readiness, OpenAPI document, docs page, request ids and access logs."""

import json
import logging

import pytest
from openapi_spec_validator import validate

from app import create_app
from services.logs import JsonFormatter


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_when_migrated(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "ready"


def test_readyz_is_503_when_database_not_migrated(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "ACCESS_LOG": False})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["code"] == "not_ready"
    assert "flask db upgrade" in body["details"]["database"]


def test_readyz_is_503_while_the_partner_registry_is_unusable_and_ready_once_fixed(app_config, tmp_path):
    """Real-time offers need the registry: a deployment without it (a missing mount) is not ready."""
    registry = tmp_path / "partners.toml"
    app = create_app({**app_config, "PARTNERS_FILE": str(registry)})
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "partner registry unusable" in response.get_json()["details"]["partners"]
    from config import DATA_DIR

    registry.write_text((DATA_DIR / "partners.toml").read_text())  # fixed in place: seen without a restart
    assert client.get("/readyz").status_code == 200
    app.extensions["courier"].close()


def test_openapi_document_is_valid_openapi_3(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    validate(spec)
    assert "/healthz" in spec["paths"]
    assert "Error" in spec["components"]["schemas"]


def test_docs_page_renders_from_bundled_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html and "http" not in html.replace("http-equiv", "")
    asset = client.get("/docs/static/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.data) > 100_000
    asset.close()


def test_incoming_request_id_is_echoed(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"


def test_request_id_is_generated_when_absent_or_unsafe(client):
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert replaced != "bad id with spaces" and len(replaced) == 32


def test_one_access_record_per_request_with_request_id(app_config, caplog):
    app = create_app({**app_config, "ACCESS_LOG": True})
    with caplog.at_level(logging.INFO, logger="courier.access"):
        app.test_client().get("/healthz", headers={"X-Request-ID": "rid-1"})
    records = [r for r in caplog.records if r.name == "courier.access"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["method"] == "GET" and line["path"] == "/healthz" and line["status"] == 200
    assert line["request_id"] == "rid-1" and line["duration_ms"] >= 0
    assert line["level"] == "INFO" and line["logger"] == "courier.access"


def test_readyz_answers_readiness_only_and_the_cache_counters_are_in_metrics(client):
    import responses

    from tests.blueprints.test_metrics import sample
    from tests.conftest import VENUE_API
    from tests.pricing_fixtures import register_venue

    before = client.get("/metrics").get_data(as_text=True)
    with responses.RequestsMock() as mock:
        register_venue(mock, VENUE_API, "helsinki")
        query = "venue_slug=home-assignment-venue-helsinki&cart_value=1&user_lat=60.17&user_lon=24.93"
        client.get(f"/api/v1/delivery-order-price?{query}")
        client.get(f"/api/v1/delivery-order-price?{query}")
    ready = client.get("/readyz").get_json()
    assert ready == {"status": "ready", "checks": ["database", "model", "partners"]}
    after = client.get("/metrics").get_data(as_text=True)
    for event, count in (("misses", 1), ("hits", 1)):
        assert sample(after, "courier_venue_cache_events_total", event=event) - sample(
            before, "courier_venue_cache_events_total", event=event) == count


def test_the_direct_access_line_is_what_the_json_formatter_writes(monkeypatch):
    """Production writes access lines without a LogRecord; they must read exactly like the others."""
    import io

    from services.logs import AccessLog, courier_handler

    stream = io.StringIO()
    handler = courier_handler(stream, JsonFormatter())  # what configure_logging installs, on a string
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", logging.INFO)
    access = AccessLog()
    access.write("GET", '/api/v1/x?q="é\\', 200, 0.125, "rid-1", 512, "203.0.113.7", 'curl/8 "x"')
    access.write("GET", "/stream", 200, 1.5, "rid-2")  # streamed, no client known: nulls
    assert access._direct_handler() is handler  # the direct path was the one taken
    access.logger.info("request", extra={"method": "GET", "path": '/api/v1/x?q="é\\', "status": 200,
                                         "duration_ms": 0.125, "bytes": 512, "client": "203.0.113.7",
                                         "user_agent": 'curl/8 "x"', "request_id": "rid-1"})
    access.logger.info("request", extra={"method": "GET", "path": "/stream", "status": 200, "duration_ms": 1.5,
                                         "bytes": None, "client": None, "user_agent": None, "request_id": "rid-2"})
    direct, direct_nulls, via_logging, via_logging_nulls = stream.getvalue().splitlines()
    assert direct_nulls.split('"level"')[1] == via_logging_nulls.split('"level"')[1]
    assert list(json.loads(direct)) == list(json.loads(via_logging))  # same keys, same order
    assert {**json.loads(direct), "ts": None} == {**json.loads(via_logging), "ts": None}
    assert direct.split('"level"')[1] == via_logging.split('"level"')[1]  # byte for byte after the time


def test_generated_request_ids_are_32_hex_digits_and_unique():
    from services.logs import new_request_id

    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_forked_worker_draws_its_own_request_id_prefix():
    import os

    from services.logs import new_request_id

    parent = new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child, like a gunicorn worker after fork
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child[:16] != parent[:16]


def test_text_log_lines_are_short_and_readable():
    from services.logs import TextFormatter

    record = logging.makeLogRecord({"name": "courier.pricing", "levelname": "WARNING", "levelno": 30,
                                    "msg": "venue refresh failed", "venue_slug": "helsinki", "request_id": "rid-9"})
    line = TextFormatter(colour=False).format(record)
    assert "WARNING courier.pricing: venue refresh failed  venue_slug=helsinki  [rid-9]" in line
    assert "\033[" not in line and not line.startswith("{")
    assert "\033[33mWARNING" in TextFormatter(colour=True).format(record)  # levels coloured on a terminal


def test_auto_log_format_is_text_on_a_terminal_and_json_otherwise():
    import io

    from services.logs import resolve_log_format

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert resolve_log_format("auto", Terminal()) == "text"
    assert resolve_log_format("auto", io.StringIO()) == "json"
    assert resolve_log_format("json", Terminal()) == "json"


def test_with_text_logs_the_access_line_goes_through_the_text_formatter(monkeypatch):
    import io

    from services.logs import AccessLog, TextFormatter, courier_handler

    stream = io.StringIO()
    handler = courier_handler(stream, TextFormatter())  # what configure_logging installs, on a string
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", logging.INFO)
    AccessLog().write("GET", "/healthz", 200, 0.2, "rid-3")
    assert "INFO    courier.access: request  method=GET path=/healthz status=200 duration_ms=0.2  [rid-3]" \
        in stream.getvalue()


def test_gunicorn_defaults_to_json_logs():
    import os
    import runpy
    from pathlib import Path

    saved = os.environ.pop("COURIER_LOG_FORMAT", None)
    try:
        runpy.run_path(str(Path(__file__).resolve().parents[2] / "gunicorn.conf.py"))
        assert os.environ["COURIER_LOG_FORMAT"] == "json"
    finally:
        os.environ.pop("COURIER_LOG_FORMAT", None)
        if saved is not None:
            os.environ["COURIER_LOG_FORMAT"] = saved


def test_readyz_and_run_records_name_files_without_the_servers_folders(app_config, tmp_path):
    """/readyz answers anyone with ops:read, run records anyone with runs:read: a file's name, not
    where it lives on the server."""
    from datetime import date

    from services.offers.runs.recording import create_run

    (tmp_path / "model.json").write_text("{}")
    app = create_app({**app_config, "MODEL_PATH": str(tmp_path / "model.json"),
                      "PARTNERS_FILE": str(tmp_path / "partners.toml")})
    client = app.test_client()
    details = client.get("/readyz").get_json()["details"]
    assert "model.json" in details["model"] and "partners.toml" in details["partners"]
    assert str(tmp_path) not in json.dumps(details)
    with app.extensions["courier"].session() as session, session.begin():
        run_id = create_run(session, partner="reference", input_path=str(tmp_path / "members.csv"),
                            input_sha256="0" * 64, as_of=date(2024, 1, 5), concurrency=1).id
    from services.offers.reports import queries

    with app.extensions["courier"].session() as session:
        record = queries.run_view(session, run_id)
    assert record["input_file"] == "members.csv" and str(tmp_path) not in json.dumps(record, default=str)
    app.extensions["courier"].close()


@pytest.mark.parametrize(("peer", "forwarded", "client"), [
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),  # nginx on this host appended the caller
    ("127.0.0.1", "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # the caller's own claim (6.6.6.6) is not believed
    ("127.0.0.1", "203.0.113.7, 10.1.2.3", "203.0.113.7"),  # two trusted hops: the nearest untrusted one
    ("198.51.100.9", "203.0.113.7", "198.51.100.9"),  # no proxy in between: the header is the caller's
    ("127.0.0.1", None, "127.0.0.1"),
])
def test_the_access_line_names_the_client_size_and_user_agent(app_config, caplog, peer, forwarded, client):
    from app import create_app

    app = create_app({**app_config, "ACCESS_LOG": True, "TRUSTED_PROXIES": "127.0.0.1 10.0.0.0/8"})
    headers = {"User-Agent": "probe/1.0", **({"X-Forwarded-For": forwarded} if forwarded else {})}
    with caplog.at_level(logging.INFO, logger="courier.access"):
        response = app.test_client().get("/healthz", headers=headers, environ_base={"REMOTE_ADDR": peer})
    [line] = [r for r in caplog.records if r.name == "courier.access"]
    assert (line.client, line.user_agent, line.bytes) == (client, "probe/1.0", len(response.get_data()))
    app.extensions["courier"].close()


def test_under_the_development_server_each_request_is_logged_once(app_config, caplog):
    import threading
    import urllib.request

    from werkzeug.serving import make_server

    app = create_app({**app_config, "ACCESS_LOG": True})
    server = make_server("127.0.0.1", 0, app)  # what `flask run` serves with
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.INFO):
            urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/healthz", timeout=5).read()
            server.shutdown()  # returns once the request's handler has finished (and logged)
    finally:
        thread.join(5)
        app.extensions["courier"].close()
    lines = [r for r in caplog.records if r.name in ("werkzeug", "courier.access")]
    assert [r.name for r in lines] == ["courier.access"], [r.getMessage() for r in lines]
