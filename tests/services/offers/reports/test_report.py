"""The offers run report: its figures come from the run, its page stands alone."""

import re
from datetime import date

import pytest

from config import DATA_DIR
from services.offers.reports.data import Histogram, RunReportData, collect_report, failure_reason
from services.offers.reports.html import render_report
from services.offers.runs.lifecycle import RunOptions
from services.offers.runs.local import run_offers
from services.offers.runs.recording import run_record
from services.offers.runs.stats import TIMELINE_POINTS, Timeline
from services.offers.statuses import MemberStatus
from tests.offers_fixtures import LivePartner, app_on_template_copy

SAMPLE = str(DATA_DIR / "member_data.csv")


@pytest.fixture(scope="module")
def failing_partner():
    # RESP refuses the big spenders: some members fail, with a reason the report must count.
    partner = LivePartner(fail={"/ml/resp/predict": lambda body: 503 if body["AVG_POINTS_BOUGHT"] > 5000 else None})
    yield partner
    partner.close()


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory, migrated_template, failing_partner):
    """One run of the bundled sample (some members failing), its report data and page: shared."""
    app, _ = app_on_template_copy(tmp_path_factory, migrated_template, "report")
    sessions = app.extensions["courier"].session_factory
    options = RunOptions(input_path=SAMPLE, partner="reference", as_of=date(2024, 1, 5), concurrency=8,
                         max_consecutive_failures=0)
    # no retries: a refused member fails at once (the retried path is the pipeline tests' business)
    report = run_offers(sessions, failing_partner.config(retries=0), options)
    with sessions() as session:
        data = collect_report(session, report.run.id)
        record = run_record(report.run)
    return record, data, render_report(data)


def test_counts_and_histograms_add_up_to_the_run_record(sample_report):
    record, data, _ = sample_report
    assert record["status"] == "completed_with_failures" and record["members_failed"] > 0
    assert data.run == record
    assert data.failures == {"resp: upstream_unavailable": record["members_failed"]}
    # every scored member is in each call's histogram exactly once (failed members record no latency)
    for call in ("ats", "resp", "offer"):
        assert data.call_latency_ms[call].total == record["members_scored"], call
    for feature, by_offer in data.features_by_offer.items():
        assert {offer: h.total for offer, h in by_offer.items()} == record["offers"], feature
    assert data.timeline[0] == [0.0, 0] and data.timeline[-1][1] == record["members_total"]
    assert [p[1] for p in data.timeline] == sorted(p[1] for p in data.timeline)


def test_the_page_shows_the_run_records_figures(sample_report):
    record, data, page = sample_report
    text = re.sub(r"<svg.*?</svg>", "", page, flags=re.S)
    cells = re.findall(r"<td>([^<]*)</td>", text)
    counts = cells[:7]
    assert counts == [str(record[k]) for k in ("rows_read", "rows_rejected", "members_total", "members_scored",
                                                "members_skipped", "members_failed")] + \
        [str(record["step_metrics"].get("retries", {}).get("total", 0))]
    for offer, count in record["offers"].items():
        assert f"<tr><td>{offer}</td><td>{count}</td>" in text
    for step, stats in record["step_metrics"].items():
        if step == "retries":
            continue
        assert f"<tr><td>{step}</td><td>{stats['items']}</td><td>{stats['seconds']:.3f}</td>" in text
        if "p99_ms" in stats:
            assert f"<td>{stats['p99_ms']:.2f}</td>" in text
    assert f"<tr><td>resp: upstream_unavailable</td><td>{record['members_failed']}</td></tr>" in text
    assert f'id="status">{record["status"]}<' in text


def test_the_page_stands_alone(sample_report):
    _, _, page = sample_report
    assert page.count("<svg") == 7  # timeline, offers, steps, call latency, failures, rejected rows, features
    assert "<script" not in page
    # nothing fetched: no external src/href (SVG's internal "#id" references only), no CSS imports
    assert not re.findall(r'(?:src|href)="(?!#)', page)
    assert not re.findall(r"url\((?!#)", page) and "@import" not in page
    # several SVGs in one document: their internal ids must not collide
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids))
    # text stays text: the axis labels are searchable, not glyph paths
    assert "members recorded" in page and "ms (log)" in page


def test_run_controlled_text_is_escaped_and_never_parsed_as_math():
    hostile = '<img src=x onerror="alert(1)">$\\notacommand$'
    run = {"id": 1, "partner": hostile, "input_file": hostile, "input_sha256": "0" * 64, "as_of": "2024-01-05",
           "status": "failed", "started_at": "2024-01-05T00:00:00+00:00", "finished_at": None, "concurrency": 1,
           "rows_read": 1, "rows_rejected": 1, "members_total": 1, "members_scored": 1, "members_skipped": 0,
           "members_failed": 0, "offers": {hostile: 1}, "rejected": {"total": 1, "by_reason": {hostile: 1}},
           "step_metrics": {}, "error": hostile, "heartbeat_at": None}
    edges = [0.0, 1.0, 2.0]
    data = RunReportData(run=run, timeline=[], call_latency_ms={}, failures={hostile: 1},
                         features_by_offer={"AVG_POINTS_BOUGHT": {hostile: Histogram(edges, [1, 0])}},
                         timeline_recorded=False)
    page = render_report(data)
    assert "<img" not in page and "&lt;img src=x" in page
    assert "No timeline recorded" in page


def _run(**fields):
    return {"id": 1, "partner": "reference", "input_file": "in.csv", "input_sha256": "0" * 64, "as_of": "2024-01-05",
            "status": "succeeded", "started_at": "2024-01-05T00:00:00+00:00", "finished_at": None, "concurrency": 1,
            "rows_read": 890, "rows_rejected": 0, "members_total": 890, "members_scored": 890, "members_skipped": 0,
            "members_failed": 0, "offers": {"OFFER_1": 890}, "rejected": {"total": 0, "by_reason": {}},
            "step_metrics": {}, "error": None, "heartbeat_at": None, **fields}


def test_a_run_that_failed_before_scoring_says_so_instead_of_blaming_a_migration():
    run = _run(status="failed", rows_read=0, members_total=0, members_scored=0, offers={},
               error="partner 'reference' did not answer its ping (upstream_unavailable)")
    page = render_report(RunReportData(run=run, timeline=[], call_latency_ms={}, failures={}))
    assert "migration" not in page
    assert "No members were recorded: the run ended before\nscoring (partner &#39;reference&#39; did not answer its " \
           "ping (upstream_unavailable))." in page


def test_equal_latencies_get_a_few_readable_ticks_and_titles_count_members():
    from services.offers.reports.data import HISTOGRAM_BINS, _log_edges
    from services.offers.reports.html import _call_latency_chart

    edges = _log_edges(5.0, 5.0).tolist()  # every call took 5 ms
    assert edges[0] < 5.0 < edges[-1] and edges[-1] / edges[0] >= 1.5
    counts = [0] * HISTOGRAM_BINS
    counts[HISTOGRAM_BINS // 2] = 890
    svg = str(_call_latency_chart({"ats": Histogram(edges, counts)}))
    x_axis = svg.split('id="calls-matplotlib.axis_1"')[1].split('id="calls-matplotlib.axis_2"')[0]
    labels = [text for text in re.findall(r"<!-- (.*?) -->", x_axis) if text != "ms (log)"]
    assert 2 <= len(labels) <= 5 and all(len(label) <= 3 for label in labels), labels  # "4", "4.8", "5.6"
    assert "ats (890 members)" in svg


@pytest.mark.parametrize(("rate", "text"), [(14378204.8, "14,400,000"), (1234.5, "1,230"), (123.4, "123"),
                                             (12.34, "12.3"), (0.1234, "0.123"), (None, "-"), (0, "-")])
def test_throughputs_print_three_significant_digits(rate, text):
    from services.offers.runs.stats import rate_text

    assert rate_text(rate) == text


def test_failure_reasons_are_step_and_code_only():
    assert failure_reason("ats: upstream_bad_status: partner answered HTTP 500 for member 123") == \
        "ats: upstream_bad_status"
    assert failure_reason("internal: ValueError: boom") == "internal: ValueError"
    assert failure_reason(None) == "unknown"


def test_a_timeline_stays_bounded_and_ends_at_the_latest_count():
    timeline = Timeline(already_recorded=100)
    for i in range(1, 20_001):
        timeline.add(i * 0.5, 7)
    points = timeline.points()
    assert len(points) <= TIMELINE_POINTS
    assert points[0] == [0.0, 100] and points[-1] == [10_000.0, 100 + 7 * 20_000]
    gaps = {round(b[0] - a[0], 3) for a, b in zip(points[1:-1], points[2:-1], strict=False)}
    assert len(gaps) == 1  # evenly spread


def test_members_skipped_only_runs_have_no_partner_histograms(app, db_session):
    from services.offers.runs.recording import MemberOutcome, create_run, finalise_run, insert_outcomes

    run = create_run(db_session, partner="reference", input_path="x.csv", input_sha256="0" * 64,
                     as_of=date(2024, 1, 5), concurrency=1)
    insert_outcomes(db_session, run.id, [MemberOutcome("m1", MemberStatus.SKIPPED, error="no_transactions")])
    finalise_run(db_session, run, status=None, rows_read=1, rejected={}, step_metrics={})
    db_session.commit()
    data = collect_report(db_session, run.id)
    assert data.call_latency_ms == {} and data.failures == {} and data.timeline == []
    page = render_report(data)
    assert "No partner calls recorded." in page and "No scored members." in page


def test_kept_report_pages_are_bounded_least_recently_served_dropped_first(monkeypatch):
    from services.offers.reports import html as report_html
    from services.offers.reports import pages as report_pages

    drawn = []
    monkeypatch.setattr(report_pages, "get_run", lambda session, run_id: run_id)
    monkeypatch.setattr(report_pages, "run_record", lambda run_id: {"id": run_id, "status": "succeeded"})
    monkeypatch.setattr(report_html, "run_report_html", lambda session, run_id: drawn.append(run_id) or f"{run_id}")
    pages = report_pages.ReportPages(keep=2)
    for run_id in (1, 2, 1, 3, 1, 2):  # 3 drops 2 (1 was served since); 2 comes back drawn again
        assert pages.get(None, run_id).html == str(run_id)
    assert drawn == [1, 2, 3, 2]
