"""The offers pipeline end to end against the reference partner on a live loopback port."""

import threading
from datetime import date

import pytest
from sqlalchemy import select

from config import DATA_DIR
from services.offers.reference import formulas as reference_formulas
from services.offers.runs.lifecycle import ResumeError, RunOptions
from services.offers.runs.local import run_offers
from services.tables import OfferResult, OfferRun
from tests.offers_fixtures import LivePartner, recorded_results

SAMPLE = str(DATA_DIR / "member_data.csv")
AS_OF = date(2024, 1, 5)


@pytest.fixture
def sessions(app):
    return app.extensions["courier"].session_factory


def options(**kw):
    return RunOptions(**{"input_path": SAMPLE, "partner": "reference", "as_of": AS_OF, "concurrency": 8, **kw})


def test_full_run_on_the_bundled_sample(app, sessions, live_partner):
    report = run_offers(sessions, live_partner.config(), options())
    run = report.run
    assert (run.status, run.rows_read, run.rows_rejected) == ("succeeded", 4335, 10)
    assert (run.members_scored, run.members_skipped, run.members_failed) == (890, 100, 0)
    assert sum(run.offers.values()) == 890
    # one ping, then three calls per scoreable member; skipped members are never sent
    assert live_partner.count("/") == 1
    assert [live_partner.count(p) for p in ("/ml/ats/predict", "/ml/resp/predict", "/offer/assign")] == [890] * 3
    assert set(run.step_metrics) == {"read", "features", "ats", "resp", "offer", "record"}
    assert run.step_metrics["ats"]["items"] == 890 and "p99_ms" in run.step_metrics["ats"]
    with sessions() as session:
        result = session.scalars(select(OfferResult).where(OfferResult.member_id == "F44DBBBC")).one()
        inputs = reference_formulas.ATS_INPUTS + reference_formulas.RESP_INPUTS
        features = {name: getattr(result, name.lower()) for name in inputs}
        # what was recorded is exactly what the partner's formulas give for the recorded features
        assert result.ats_prediction == reference_formulas.ats(features)
        assert result.resp_prediction == reference_formulas.resp(features)
        assert result.offer == reference_formulas.assign_offer(result.ats_prediction, result.resp_prediction)
        assert result.status == "scored" and result.ats_ms > 0
        skipped = session.scalars(select(OfferResult).where(OfferResult.status == "skipped")).all()
        assert len(skipped) == 100 and {s.error for s in skipped} == {"no_transactions"}


def test_batch_endpoints_record_exactly_what_per_member_calls_record(app, sessions, live_partner):
    per_member = run_offers(sessions, live_partner.config(batch=False), options())
    calls_before = len(live_partner.calls)
    batched = run_offers(sessions, live_partner.config(batch=True), options())
    batch_calls = live_partner.calls[calls_before:]
    # 890 members in batches of at most 1,000: one call per endpoint (plus the ping)
    assert sorted(p for p, _ in batch_calls) == ["/", "/ml/ats/predict/batch", "/ml/resp/predict/batch",
                                                 "/offer/assign/batch"]
    assert batched.run.status == per_member.run.status == "succeeded"
    assert batched.run.offers == per_member.run.offers
    assert recorded_results(sessions, batched.run.id) == recorded_results(sessions, per_member.run.id)


def test_small_batches_are_split_and_answers_kept_in_member_order(app, sessions, live_partner):
    import dataclasses

    config = live_partner.config(batch=True)
    config = dataclasses.replace(config, batch=dataclasses.replace(config.batch, max_size=64, concurrency=3))
    report = run_offers(sessions, config, options())
    reference = run_offers(sessions, live_partner.config(), options())
    assert live_partner.count("/ml/ats/predict/batch") == -(-890 // 64)
    assert max(len(body) for path, body in live_partner.calls if path == "/ml/ats/predict/batch") == 64
    assert recorded_results(sessions, report.run.id) == recorded_results(sessions, reference.run.id)


def test_a_partner_with_batch_endpoints_and_one_without_in_the_same_suite(app, sessions, live_partner, tmp_path):
    from services.offers.partners.registry import load_registry

    registry = tmp_path / "partners.toml"
    text = (DATA_DIR / "partners.toml").read_text()
    # a second partner, same server, declared without its batch table
    second = text.split("[partners.reference.batch]")[0].replace("[partners.reference]", "[partners.plain]") + \
        text[text.index("[partners.reference.features]"):].replace("partners.reference.", "partners.plain.")
    registry.write_text(text + "\n" + second)
    loaded = load_registry(registry, service_url=live_partner.service_url)
    assert loaded.get("reference").batch is not None and loaded.get("plain").batch is None
    batched = run_offers(sessions, loaded.get("reference"), options())
    plain = run_offers(sessions, loaded.get("plain"), options(partner="plain"))
    assert live_partner.count("/ml/ats/predict/batch") == 1 and live_partner.count("/ml/ats/predict") == 890
    assert recorded_results(sessions, batched.run.id) == recorded_results(sessions, plain.run.id)


def test_a_run_with_failed_members_is_completed_with_failures(app, sessions):
    partner = LivePartner(fail={"/ml/resp/predict": lambda body: 503 if body["AVG_POINTS_BOUGHT"] > 5000 else None})
    try:
        report = run_offers(sessions, partner.config(retries=0), options())
    finally:
        partner.close()
    run = report.run
    assert run.status == "completed_with_failures" and run.members_failed > 0 and run.error is None
    assert run.members_scored + run.members_failed == 890
    with sessions() as session:
        failed = session.scalars(select(OfferResult).where(OfferResult.status == "failed")).all()
        assert all(f.error.startswith("resp: upstream_unavailable") for f in failed)
        assert all(f.avg_points_bought > 5000 and f.offer is None for f in failed)


@pytest.mark.parametrize("bad_answer", ["not json", '{"prediction": "high"}', '{"prediction": null}', "[1, 2]"])
def test_unusable_partner_answers_fail_the_member_and_are_never_recorded_as_results(app, sessions, bad_answer):
    odd = {"/ml/ats/predict": lambda body: (200, bad_answer) if body["PCT_GIFT_TRANSACTIONS"] > 0.5 else None}
    partner = LivePartner(fail=odd)
    try:
        report = run_offers(sessions, partner.config(), options())
    finally:
        partner.close()
    run = report.run
    assert run.status == "completed_with_failures" and 0 < run.members_failed < 890
    with sessions() as session:
        failed = session.scalars(select(OfferResult).where(OfferResult.status == "failed")).all()
    assert all(f.error.startswith("ats: upstream_invalid") for f in failed)
    assert all(f.ats_prediction is None and f.offer is None for f in failed)
    assert all(f.pct_gift_transactions > 0.5 for f in failed)


def test_ping_failure_ends_the_run_failed_within_the_connect_timeout(app, sessions):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    partner = LivePartner()
    config = partner.config()
    partner.close()
    import dataclasses

    config = dataclasses.replace(config, base_url=f"http://127.0.0.1:{port}/partners/reference")
    started = time.monotonic()
    report = run_offers(sessions, config, options())
    assert time.monotonic() - started < 10  # features + one refused connection, no retries
    run = report.run
    assert run.status == "failed" and "did not answer its ping" in run.error and "unreachable" in run.error
    assert run.members_total == 0  # nothing scored, nothing recorded


def test_circuit_breaker_stops_the_run_failed_with_the_last_error(app, sessions):
    partner = LivePartner(fail={"/offer/assign": lambda body: 500})
    try:
        report = run_offers(sessions, partner.config(retries=0), options(max_consecutive_failures=20, concurrency=4))
        sent = partner.count("/offer/assign")
    finally:
        partner.close()
    run = report.run
    assert run.status == "failed"
    assert "20 consecutive member failures" in run.error and "offer: upstream_unavailable" in run.error
    # it stopped early: the 20 that tripped it plus at most the members already in flight
    assert 20 <= run.members_failed == sent <= 20 + 4
    assert run.members_scored == 0


def test_resume_retries_failed_members_without_duplicate_rows(app, sessions):
    flaky = {"/ml/ats/predict": lambda body: 503 if body["PCT_BUY_TRANSACTIONS"] > 0.5 else None}
    partner = LivePartner(fail=flaky)
    try:
        first = run_offers(sessions, partner.config(retries=0), options())
        assert first.run.status == "completed_with_failures"
        failed_before = first.run.members_failed
        assert failed_before > 0
        partner.fail.clear()  # the partner recovers
        calls_before = partner.count("/ml/ats/predict")
        second = run_offers(sessions, partner.config(retries=0), options(resume_run_id=first.run.id))
        resent = partner.count("/ml/ats/predict") - calls_before
    finally:
        partner.close()
    assert second.run.id == first.run.id and second.run.status == "succeeded"
    assert resent == failed_before  # only the failed members were sent again
    assert (second.run.members_scored, second.run.members_skipped, second.run.members_failed) == (890, 100, 0)
    with sessions() as session:
        rows = session.scalars(select(OfferResult.member_id).where(OfferResult.run_id == first.run.id)).all()
    assert len(rows) == len(set(rows)) == 990


def test_metrics_count_each_attempt_of_a_resumed_run_once(app, sessions):
    """Gap: courier_offer_members_total counted a resumed run's earlier members again (332,924
    counted for 287,193 recorded in one trial). Each attempt counts what it added: the first its
    scored, skipped and failed members; the resume only the members it scored anew."""
    from services.metrics import metrics

    def counted(outcome):
        return metrics().offer_members.labels(outcome)._value.get()

    before = {o: counted(o) for o in ("scored", "skipped", "failed")}
    flaky = {"/ml/ats/predict": lambda body: 503 if body["PCT_BUY_TRANSACTIONS"] > 0.5 else None}
    partner = LivePartner(fail=flaky)
    try:
        first = run_offers(sessions, partner.config(retries=0), options())
        failed = first.run.members_failed
        partner.fail.clear()
        second = run_offers(sessions, partner.config(retries=0), options(resume_run_id=first.run.id))
    finally:
        partner.close()
    assert failed > 0 and second.run.members_scored == 890
    assert counted("scored") - before["scored"] == 890  # 890 - failed by the first attempt, failed by the resume
    assert counted("skipped") - before["skipped"] == 100  # once, by the first attempt
    assert counted("failed") - before["failed"] == failed  # the first attempt's; the resume failed none


def test_interrupted_run_resumes_without_resending_or_duplicating(app, sessions, live_partner):
    stop = threading.Event()
    seen = [0]

    def stop_after_300(body):
        seen[0] += 1
        if seen[0] >= 300:
            stop.set()  # as Ctrl-C does: intake stops, members in flight finish

    live_partner.fail["/ml/ats/predict"] = stop_after_300
    first = run_offers(sessions, live_partner.config(), options(), stop=stop)
    assert first.run.status == "interrupted" and 0 < first.run.members_total < 990
    sent_before = first.run.members_scored + first.run.members_failed
    assert 300 <= sent_before <= 300 + 8  # at most the members in flight finished after the stop
    assert live_partner.count("/ml/ats/predict") == sent_before
    live_partner.fail.clear()
    second = run_offers(sessions, live_partner.config(), options(resume_run_id=first.run.id))
    assert second.run.id == first.run.id and second.run.status == "succeeded"
    assert (second.run.members_scored, second.run.members_skipped) == (890, 100)
    # only the members not yet recorded were sent, once each
    assert live_partner.count("/ml/ats/predict") == 890
    with sessions() as session:
        rows = session.scalars(select(OfferResult.member_id).where(OfferResult.run_id == first.run.id)).all()
    assert len(rows) == len(set(rows)) == 990


def test_resume_refuses_a_different_input(app, sessions, live_partner):
    with sessions() as session, session.begin():
        run = OfferRun(partner="reference", input_path="x", input_sha256="0" * 64, as_of=AS_OF, status="interrupted",
                       concurrency=1, offers={}, rejected={}, step_metrics={})
        session.add(run)
        session.flush()
        run_id = run.id
    with pytest.raises(ResumeError, match="different input"):
        run_offers(sessions, live_partner.config(), options(resume_run_id=run_id))


def test_retries_are_counted_in_the_run_record(app, sessions):
    seen = {}

    def first_try_fails(body):
        key = body["AVG_POINTS_BOUGHT"], body["DAYS_SINCE_LAST_TRANSACTION"]
        seen[key] = seen.get(key, 0) + 1
        return 503 if seen[key] == 1 else None

    partner = LivePartner(fail={"/ml/resp/predict": first_try_fails})
    try:
        report = run_offers(sessions, partner.config(), options())
    finally:
        partner.close()
    assert report.run.status == "succeeded"
    assert report.retries.total >= 890 - 5  # members sharing the same key only fail once
    assert report.run.step_metrics["retries"]["by_reason"] == {"partner:reference: status 503": report.retries.total}


def test_a_failing_results_writer_fails_the_run_instead_of_hanging(app, sessions, live_partner, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def locked(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr("services.offers.runs.writer.insert_outcomes", locked)
    report = run_offers(sessions, live_partner.config(), options())
    assert report.run.status == "failed"
    assert report.run.error.startswith("writing results failed") and "database is locked" in report.run.error


def test_a_batch_answer_of_the_wrong_length_fails_that_batch_only(app, sessions):
    import dataclasses
    import json

    def short_answer(body):
        if body[0]["PCT_BUY_TRANSACTIONS"] < 0.2:  # some batches: one prediction too few
            return 200, json.dumps([{"prediction": 1.0}] * (len(body) - 1))
        return None

    partner = LivePartner(fail={"/ml/ats/predict/batch": short_answer})
    config = partner.config(batch=True)
    config = dataclasses.replace(config, batch=dataclasses.replace(config.batch, max_size=50))
    try:
        report = run_offers(sessions, config, options(max_consecutive_failures=0))
    finally:
        partner.close()
    with sessions() as session:
        failed = session.scalars(select(OfferResult).where(OfferResult.status == "failed")).all()
    assert report.run.status == "completed_with_failures"
    assert failed and len(failed) % 50 in (0, 890 % 50)  # whole batches, never part of one
    assert all("answered a batch of" in f.error and f.ats_prediction is None for f in failed)
    assert report.run.members_scored + len(failed) == 890


def test_one_unusable_item_in_a_batch_answer_fails_only_that_member(app, sessions):
    import json

    def one_bad_item(body):
        answers = [{"offer": "OFFER_1"}] * len(body)
        answers[3] = {"offer": None}
        return 200, json.dumps(answers)

    partner = LivePartner(fail={"/offer/assign/batch": one_bad_item})
    try:
        report = run_offers(sessions, partner.config(batch=True), options())
    finally:
        partner.close()
    assert report.run.status == "completed_with_failures" and report.run.members_failed == 1
    assert report.run.members_scored == 889
    with sessions() as session:
        failed = session.scalars(select(OfferResult).where(OfferResult.status == "failed")).one()
    assert failed.error.startswith("offer: upstream_invalid") and failed.offer is None


def test_a_nonstandard_number_in_one_batch_item_fails_only_that_member(app, sessions):
    """JSON has no Infinity: orjson refuses such a body, and the standard library's reading of it
    (behind orjson) keeps the failure to the one member whose prediction it is."""
    import json

    def one_infinite_prediction(body):
        answers = [json.dumps({"prediction": 0.5})] * len(body)
        answers[7] = '{"prediction": Infinity}'
        return 200, "[" + ", ".join(answers) + "]"

    partner = LivePartner(fail={"/ml/ats/predict/batch": one_infinite_prediction})
    try:
        report = run_offers(sessions, partner.config(batch=True), options())
    finally:
        partner.close()
    assert report.run.members_failed == 1 and report.run.members_scored == 889
    with sessions() as session:
        failed = session.scalars(select(OfferResult).where(OfferResult.status == "failed")).one()
    assert failed.error.startswith("ats: upstream_invalid") and "inf" in failed.error


def test_a_partner_without_a_ping_route_is_still_scored(app, sessions):
    partner = LivePartner(fail={"/": lambda body: 404})  # up, but no ping route
    try:
        report = run_offers(sessions, partner.config(), options())
    finally:
        partner.close()
    assert report.run.status == "succeeded" and report.run.members_scored == 890


def test_a_partner_answering_its_ping_with_503_fails_the_run(app, sessions):
    partner = LivePartner(fail={"/": lambda body: 503})
    try:
        report = run_offers(sessions, partner.config(), options())
        scored_calls = partner.count("/ml/ats/predict")
    finally:
        partner.close()
    assert report.run.status == "failed" and "did not answer its ping" in report.run.error
    assert scored_calls == 0 and report.run.members_total == 0


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_output_from_the_recorded_results_is_the_output_read_back(app, sessions, tmp_path, suffix):
    """--output writes the results as the writer committed them instead of reading the run back
    (0.5-0.6 s of a 100k-member run); the file is byte for byte the one the database gives."""
    from services.offers.runs.recording import RecordedResults, write_output

    # scored, skipped and failed members, some with ids a spreadsheet would run as formulas
    lines = open(SAMPLE, encoding="utf-8").read().splitlines(keepends=True)
    formulas = [line if i == 0 or i % 7 else "=" + line if i % 2 else "+" + line for i, line in enumerate(lines)]
    (tmp_path / "members.csv").write_text("".join(formulas), encoding="utf-8")
    partner = LivePartner(fail={"/ml/resp/predict": lambda body: 503 if body["AVG_POINTS_BOUGHT"] > 5000 else None})
    recorded = RecordedResults()
    try:
        report = run_offers(sessions, partner.config(retries=0), options(input_path=str(tmp_path / "members.csv")),
                            recorded=recorded)
    finally:
        partner.close()
    run = report.run
    assert run.members_failed and run.members_skipped and run.members_scored
    assert recorded.complete_for(run)
    with sessions() as session:
        write_output(session, run, tmp_path / f"kept{suffix}", recorded)
        write_output(session, run, tmp_path / f"read{suffix}")
    assert (tmp_path / f"kept{suffix}").read_bytes() == (tmp_path / f"read{suffix}").read_bytes()
    if suffix == ".csv":
        assert b"\r\n'=" in (tmp_path / "kept.csv").read_bytes()  # neutralised, as the export does


def test_recorded_results_past_their_bound_or_of_a_resumed_run_are_not_used(app, sessions, live_partner):
    from services.offers.runs.recording import RecordedResults

    bounded = RecordedResults(max_rows=500)  # the sample's 990 results
    run = run_offers(sessions, live_partner.config(), options(), recorded=bounded).run
    assert run.members_total == 990 and bounded.overflowed and not bounded.complete_for(run)

    stop = threading.Event()
    seen = [0]

    def stop_after_300(body):
        seen[0] += 1
        if seen[0] >= 300:
            stop.set()

    live_partner.fail["/ml/ats/predict"] = stop_after_300
    interrupted = run_offers(sessions, live_partner.config(), options(), stop=stop).run
    assert interrupted.status == "interrupted"
    live_partner.fail.clear()
    again = RecordedResults()
    resumed = run_offers(sessions, live_partner.config(), options(resume_run_id=interrupted.id), recorded=again).run
    assert resumed.members_total == 990 and 0 < again.rows < 990 and not again.complete_for(resumed)
