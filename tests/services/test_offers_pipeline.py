"""The offers pipeline end to end against the reference partner (routed into the app with `responses`)."""

import threading
from datetime import date

import pytest
import responses
from sqlalchemy import select

from config import DATA_DIR
from services.models import OfferResult, OfferRun
from services.offers import reference_models
from services.offers.partners import PartnerClient, load_registry
from services.offers.pipeline import ResumeError, RunOptions, run_offers
from tests.offers_fixtures import route_to_app

SAMPLE = str(DATA_DIR / "member_data.csv")
AS_OF = date(2024, 1, 5)


@pytest.fixture
def client():
    return PartnerClient(load_registry(DATA_DIR / "partners.toml").get("reference"))


@pytest.fixture
def sessions(app):
    return app.extensions["courier"].session_factory


def options(**kw):
    return RunOptions(**{"input_path": SAMPLE, "partner": "reference", "as_of": AS_OF, "concurrency": 8, **kw})


def test_full_run_on_the_bundled_sample(app, sessions, client):
    with responses.RequestsMock() as mock:
        calls = route_to_app(mock, app)
        report = run_offers(sessions, client, options())
    run = report.run
    assert (run.status, run.rows_read, run.rows_rejected) == ("succeeded", 4335, 10)
    assert (run.members_scored, run.members_skipped, run.members_failed) == (890, 100, 0)
    assert sum(run.offers.values()) == 890
    assert len(calls) == 3 * 890  # skipped members are never sent
    assert set(run.step_metrics) == {"read", "features", "ats", "resp", "offer", "record"}
    assert run.step_metrics["ats"]["items"] == 890 and "p99_ms" in run.step_metrics["ats"]
    with sessions() as session:
        result = session.scalars(select(OfferResult).where(OfferResult.member_id == "F44DBBBC")).one()
        features = {name: getattr(result, name.lower()) for name in reference_models.ATS_INPUTS + reference_models.RESP_INPUTS}
        # what was recorded is what the partner's formulas give for the recorded features
        assert result.ats_prediction == pytest.approx(reference_models.ats(features))
        assert result.resp_prediction == pytest.approx(reference_models.resp(features))
        assert result.offer == reference_models.assign_offer(result.ats_prediction, result.resp_prediction)
        assert result.status == "scored" and result.ats_ms > 0
        skipped = session.scalars(select(OfferResult).where(OfferResult.status == "skipped")).all()
        assert len(skipped) == 100 and {s.error for s in skipped} == {"no_transactions"}


def test_partner_failures_are_recorded_and_the_run_goes_on(app, sessions, client):
    fail_big_spenders = {"/ml/resp/predict": lambda body: 503 if body["AVG_POINTS_BOUGHT"] > 5000 else None}
    with responses.RequestsMock() as mock:
        route_to_app(mock, app, fail=fail_big_spenders)
        report = run_offers(sessions, client, options())
    run = report.run
    assert run.status == "succeeded" and run.members_failed > 0
    assert run.members_scored + run.members_failed == 890
    with sessions() as session:
        failed = session.scalars(select(OfferResult).where(OfferResult.status == "failed")).all()
        assert all(f.error.startswith("resp: upstream_unavailable") for f in failed)
        assert all(f.avg_points_bought > 5000 and f.offer is None for f in failed)


def test_interrupted_run_resumes_without_resending_or_duplicating(app, sessions, client):
    stop = threading.Event()
    recorded = [0]

    def progress(n):
        recorded[0] += n
        if recorded[0] >= 300:
            stop.set()

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        first_calls = route_to_app(mock, app)
        first = run_offers(sessions, client, options(), progress=progress, stop=stop)
    assert first.run.status == "interrupted" and 0 < first.run.members_total < 990
    sent_before = first.run.members_scored + first.run.members_failed
    assert len([c for c in first_calls if c[0] == "/ml/ats/predict"]) == sent_before
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        second_calls = route_to_app(mock, app)
        second = run_offers(sessions, client, options(resume_run_id=first.run.id))
    assert second.run.id == first.run.id and second.run.status == "succeeded"
    assert (second.run.members_scored, second.run.members_skipped) == (890, 100)
    # only the members not yet recorded were sent, once each
    assert len([c for c in second_calls if c[0] == "/ml/ats/predict"]) == 890 - sent_before
    with sessions() as session:
        rows = session.scalars(select(OfferResult.member_id).where(OfferResult.run_id == first.run.id)).all()
    assert len(rows) == len(set(rows)) == 990


def test_resume_refuses_a_different_input(app, sessions, client, tmp_path):
    with sessions() as session, session.begin():
        run = OfferRun(partner="reference", input_path="x", input_sha256="0" * 64, as_of=AS_OF, status="interrupted",
                       concurrency=1, offers={}, rejected={}, step_metrics={})
        session.add(run)
        session.flush()
        run_id = run.id
    with pytest.raises(ResumeError, match="different input"):
        run_offers(sessions, client, options(resume_run_id=run_id))


@pytest.fixture
def live_partner(app):
    """The app's reference partner on a real loopback port (spawned scoring processes cannot see mocks)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/partners/reference"
    server.shutdown()
    server.server_close()


def test_several_scoring_processes_record_the_same_results(app, sessions, live_partner, tmp_path):
    registry = tmp_path / "partners.toml"
    registry.write_text((DATA_DIR / "partners.toml").read_text().replace(
        "http://127.0.0.1:8000/partners/reference", live_partner))
    live = PartnerClient(load_registry(registry).get("reference"))
    single = run_offers(sessions, live, options(concurrency=4))
    multi = run_offers(sessions, live, options(concurrency=4, processes=2))
    assert (multi.run.members_scored, multi.run.members_skipped, multi.run.members_failed) == (890, 100, 0)
    assert multi.run.offers == single.run.offers
    with sessions() as session:
        def results(run_id):
            rows = session.execute(select(OfferResult.member_id, OfferResult.ats_prediction, OfferResult.offer)
                                   .where(OfferResult.run_id == run_id).order_by(OfferResult.member_id)).all()
            return [tuple(r) for r in rows]

        assert results(multi.run.id) == results(single.run.id)
    assert multi.run.step_metrics["ats"]["items"] == 890


def test_interrupted_multi_process_run_resumes_without_duplicates(app, sessions, live_partner, tmp_path):
    registry = tmp_path / "partners.toml"
    registry.write_text((DATA_DIR / "partners.toml").read_text().replace(
        "http://127.0.0.1:8000/partners/reference", live_partner))
    live = PartnerClient(load_registry(registry).get("reference"))
    stop = threading.Event()
    seen = [0]

    def progress(n):
        seen[0] += n
        if seen[0] >= 300:
            stop.set()

    first = run_offers(sessions, live, options(concurrency=4, processes=2), progress=progress, stop=stop)
    assert first.run.status == "interrupted" and first.run.members_total < 990
    second = run_offers(sessions, live, options(concurrency=4, processes=2, resume_run_id=first.run.id))
    assert second.run.status == "succeeded"
    assert (second.run.members_scored, second.run.members_skipped, second.run.members_failed) == (890, 100, 0)
    with sessions() as session:
        rows = session.scalars(select(OfferResult.member_id).where(OfferResult.run_id == first.run.id)).all()
    assert len(rows) == len(set(rows)) == 990
