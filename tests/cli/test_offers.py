"""`flask run-offers` and `flask partners check`: outputs, summary, exit codes."""

import csv
import json
import re

import polars as pl
import pytest
import responses

from config import DATA_DIR
from services.offers.result_shape import EXPORT_COLUMNS
from tests.auth_fixtures import keyed_client
from tests.offers_fixtures import LivePartner, app_on_template_copy, route_to_app

SAMPLE = str(DATA_DIR / "member_data.csv")
ARGS = ["run-offers", "--input", SAMPLE, "--as-of", "2024-01-05"]


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, migrated_template, module_partner):
    """One CLI run on the bundled sample writing all three formats (shared by the export tests)."""
    app, folder = app_on_template_copy(tmp_path_factory, migrated_template, "offers",
                                       SERVICE_URL=module_partner.service_url)
    runner = app.test_cli_runner()
    results = {"csv": runner.invoke(args=[*ARGS, "--output", str(folder / "out.csv")])}
    for fmt in ("jsonl", "parquet"):
        results[fmt] = runner.invoke(args=[*ARGS, "--output", str(folder / f"out.{fmt}")])
    return folder, results


def partner_app(app_config, partner, **config):
    from app import create_app

    return create_app({**app_config, "SERVICE_URL": partner.service_url, **config})


def test_exit_0_and_summary_table(sample_run):
    _, results = sample_run
    result = results["csv"]
    assert result.exit_code == 0, result.output
    out = result.output
    assert "4335 read, 10 rejected (missing member id: 10)" in out
    assert "890 scored, 100 skipped, 0 failed" in out
    for step in ("read", "features", "ats", "resp", "offer", "record"):
        assert f"\n  {step} " in out
    # scored members (890, not the 990 recorded) over the process's wall time so far
    rate, since = re.search(r"end to end: ([\d,.]+) scored members/s \(([\d.]+) s since the process started\)",
                            out).groups()
    assert float(rate.replace(",", "")) == pytest.approx(890 / float(since), rel=0.01)


def test_csv_output_has_exactly_the_documented_columns(sample_run):
    folder, _ = sample_run
    with open(folder / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == EXPORT_COLUMNS == [
        "member_id", "AVG_POINTS_BOUGHT", "AVG_REVENUE_USD", "LAST_3_TRANSACTIONS_AVG_POINTS_BOUGHT",
        "LAST_3_TRANSACTIONS_AVG_REVENUE_USD", "PCT_BUY_TRANSACTIONS", "PCT_GIFT_TRANSACTIONS",
        "PCT_REDEEM_TRANSACTIONS", "DAYS_SINCE_LAST_TRANSACTION", "ats_prediction", "resp_prediction", "offer",
        "status", "error", "ats_ms", "resp_ms", "offer_ms"]
    assert len(rows) == 990
    assert sum(r["status"] == "scored" for r in rows) == 890
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 100 and all(r["error"] == "no_transactions" and r["offer"] == "" for r in skipped)


def test_summary_json_next_to_the_output(sample_run):
    folder, _ = sample_run
    summary = json.loads((folder / "out.csv.summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["members_scored"] == 890
    assert summary["rejected"]["by_reason"] == {"missing member id": 10}
    assert summary["step_metrics"]["offer"]["items"] == 890


def test_jsonl_and_parquet_hold_the_same_results(sample_run):
    folder, results = sample_run
    assert results["jsonl"].exit_code == 0 and results["parquet"].exit_code == 0
    with open(folder / "out.csv", newline="") as handle:
        from_csv = {r["member_id"]: r for r in csv.DictReader(handle)}
    lines = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
    frame = pl.read_parquet(folder / "out.parquet")
    assert len(lines) == frame.height == 990 and frame.columns == EXPORT_COLUMNS
    by_member = {r["member_id"]: r for r in frame.to_dicts()}
    for line in lines[:50]:
        assert by_member[line["member_id"]]["offer"] == line["offer"]
        assert from_csv[line["member_id"]]["offer"] == (line["offer"] or "")
        if line["status"] == "scored":
            assert by_member[line["member_id"]]["ats_prediction"] == line["ats_prediction"]


def test_failed_members_exit_1_completed_with_failures(app_config):
    partner = LivePartner(fail={"/offer/assign/batch": lambda body: 422})
    try:
        result = partner_app(app_config, partner).test_cli_runner().invoke(
            args=[*ARGS, "--max-consecutive-failures", "0"])
    finally:
        partner.close()
    assert result.exit_code == 1, result.output
    assert "completed_with_failures" in result.output and "0 scored, 100 skipped, 890 failed" in result.output
    assert "--resume 1" in result.output


def test_unreachable_partner_exits_1_quickly_with_run_failed(app_config):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from app import create_app

    app = create_app({**app_config, "SERVICE_URL": f"http://127.0.0.1:{port}"})  # nothing listens there
    started = time.monotonic()
    result = app.test_cli_runner().invoke(args=ARGS)
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    assert "run 1 failed" in result.output and "did not answer its ping" in result.output
    assert "0 scored" in result.output and "retrying" not in result.output
    assert "hint: is the partner up at" in result.output


def test_summary_json_and_run_record_agree_on_status(app_config, tmp_path):
    partner = LivePartner(fail={"/ml/resp/predict/batch": lambda body: 422})
    try:
        app = partner_app(app_config, partner)
        result = app.test_cli_runner().invoke(args=[*ARGS, "--output", str(tmp_path / "out.csv"),
                                                    "--max-consecutive-failures", "0"])
    finally:
        partner.close()
    summary = json.loads((tmp_path / "out.csv.summary.json").read_text())
    record = keyed_client(app).get("/api/v1/offer-runs/1").get_json()
    assert result.exit_code == 1
    assert summary["status"] == record["status"] == "completed_with_failures"
    assert summary["members_failed"] == record["members_failed"] == 890


def test_retries_are_counted_not_printed_one_per_retry(app_config):
    partner = LivePartner(fail={"/ml/ats/predict/batch": lambda body: 503})
    try:
        result = partner_app(app_config, partner, OFFERS_MAX_CONSECUTIVE_FAILURES=0).test_cli_runner().invoke(
            args=ARGS)
    finally:
        partner.close()
    assert result.exit_code == 1
    # 3 retries for the one batch, counted in the summary; at most one note line per 5 seconds
    assert "retries:  3 (partner:reference: status 503: 3)" in result.output
    assert result.output.count("retrying (") <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run-offers", "--input", "/no/such/file.csv"], "/no/such/file.csv: cannot read"),
        (["run-offers", "--input", SAMPLE, "--partner", "nobody"], "Unknown partner 'nobody'"),
        (["run-offers", "--input", SAMPLE, "--as-of", "05/01/2024"], "expected YYYY-MM-DD"),
        (["run-offers", "--input", SAMPLE, "--resume", "999"], "no such run"),
    ],
)
def test_bad_usage_or_unreadable_input_exit_2(runner, args, message):
    result = runner.invoke(args=args)
    assert result.exit_code == 2 and message in result.output


def test_wrong_header_exits_2_naming_the_file(runner, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b,c\n1,2,3\n")
    result = runner.invoke(args=["run-offers", "--input", str(path)])
    assert result.exit_code == 2 and "bad.csv: unexpected header" in result.output


def test_partners_check_pings_each_partner(app, runner):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        route_to_app(mock, app, ping=True)
        result = runner.invoke(args=["partners", "check"])
    assert result.exit_code == 0 and "reference: ok" in result.output


def test_partners_check_fails_when_a_partner_is_down(runner):
    with responses.RequestsMock() as mock:
        mock.get("http://127.0.0.1:8000/partners/reference/", status=503)
        result = runner.invoke(args=["partners", "check", "reference"])
    assert result.exit_code == 1 and "reference: FAILED" in result.output


def test_partners_check_reports_an_invalid_registry(app_config, tmp_path):
    from app import create_app

    bad = tmp_path / "p.toml"
    bad.write_text("[partners.x]\nbase_url = 'nope'\n")
    result = create_app({**app_config, "PARTNERS_FILE": str(bad)}).test_cli_runner().invoke(args=["partners", "check"])
    assert result.exit_code == 2 and "partners.x.base_url" in result.output


def test_a_password_in_the_partner_url_is_not_printed_or_recorded(app_config, tmp_path):
    from app import create_app

    registry = tmp_path / "partners.toml"
    registry.write_text((DATA_DIR / "partners.toml").read_text().replace(
        '"{service}/partners/reference"', '"http://bob:s3cret@127.0.0.1:1/partners/reference"'))
    app = create_app({**app_config, "PARTNERS_FILE": str(registry)})
    result = app.test_cli_runner().invoke(args=[*ARGS, "--output", str(tmp_path / "out.csv")])
    record = keyed_client(app).get("/api/v1/offer-runs/1").get_data(as_text=True)
    assert result.exit_code == 1 and "did not answer its ping" in result.output
    assert "s3cret" not in result.output and "s3cret" not in record
    assert "s3cret" not in (tmp_path / "out.csv.summary.json").read_text()


def test_an_https_partner_behind_a_proxy_is_a_usage_error_before_any_work(app_config, tmp_path, monkeypatch):
    from app import create_app

    registry = tmp_path / "partners.toml"
    registry.write_text((DATA_DIR / "partners.toml").read_text().replace(
        '"{service}/partners/reference"', '"https://partner.example/partners/reference"'))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    result = create_app({**app_config, "PARTNERS_FILE": str(registry)}).test_cli_runner().invoke(args=ARGS)
    assert result.exit_code == 2 and "does not tunnel TLS through a proxy" in result.output
    assert "scoring" not in result.output


def test_a_sparse_gigabyte_input_is_refused_at_once_naming_the_line(app, tmp_path):
    path = tmp_path / "sparse.csv"
    with open(path, "wb") as handle:
        handle.write((DATA_DIR / "member_data.csv").read_bytes().split(b"\n", 1)[0] + b"\n")
        handle.truncate(1 << 30)  # 1 GB, all NUL bytes after the header: no disk used
    result = app.test_cli_runner().invoke(args=["run-offers", "--input", str(path), "--as-of", "2024-01-05"])
    assert result.exit_code == 2
    assert "line 2 is longer than 65536 bytes; not a transaction CSV" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", ["out.xlsx", "out"])
def test_an_unsupported_output_format_is_a_usage_error_before_any_work(app, tmp_path, name):
    result = app.test_cli_runner().invoke(args=[*ARGS, "--output", str(tmp_path / name)])
    assert result.exit_code == 2
    assert "unsupported format" in result.output and ".csv, .jsonl, .parquet" in result.output
    assert not (tmp_path / name).exists()
    assert "scoring" not in result.output  # refused before the run started


def test_the_resume_hint_is_a_command_that_works_as_printed(app_config, tmp_path):
    partner = LivePartner(fail={"/ml/resp/predict/batch": lambda body: 422})
    try:
        app = partner_app(app_config, partner)
        runner = app.test_cli_runner()
        first = runner.invoke(args=[*ARGS, "--max-consecutive-failures", "0"])
        assert first.exit_code == 1
        hint = first.output.split("resume with `", 1)[1].split("`", 1)[0]
        assert hint == f".venv/bin/flask run-offers --input {SAMPLE} --partner reference --as-of 2024-01-05 --resume 1"
        partner.fail.clear()
        resumed = runner.invoke(args=hint.split()[1:])  # exactly what was printed, after the program
        assert resumed.exit_code == 0, resumed.output
    finally:
        partner.close()


def test_offers_report_writes_the_page_of_a_recorded_run(sample_run, monkeypatch):
    from app import create_app

    folder, results = sample_run
    assert results["csv"].exit_code == 0
    app = create_app({"DATABASE_URL": f"sqlite:///{folder / 'db.sqlite'}", "ACCESS_LOG": False, "TESTING": True})
    runner = app.test_cli_runner()
    out = folder / "reports" / "run-1.html"
    result = runner.invoke(args=["offers", "report", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    page = out.read_text()
    assert "<h1>Offers run 1 " in page and "<td>4335</td><td>10</td><td>990</td><td>890</td>" in page
    monkeypatch.chdir(folder)
    assert runner.invoke(args=["offers", "report", "2"]).exit_code == 0
    assert (folder / "offer-run-2.html").exists()


def test_offers_report_of_an_unknown_run_exits_2(runner):
    result = runner.invoke(args=["offers", "report", "42"])
    assert result.exit_code == 2 and "No offer run 42." in result.output


def test_prune_uploads_removes_inputs_past_their_retention(app, runner, tmp_path):
    import os
    import time

    folder = tmp_path / "uploads"
    folder.mkdir()
    old, fresh = folder / f"{'a' * 64}.csv", folder / f"{'b' * 64}.csv"
    for path in (old, fresh):
        path.write_text("x")
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    app.extensions["courier.offers"].submissions.uploads.folder = folder
    result = runner.invoke(args=["offers", "prune-uploads"])
    assert result.exit_code == 0 and f"removed 1 uploaded input(s) from {folder}" in result.output
    assert [p.name for p in folder.iterdir()] == [fresh.name]
