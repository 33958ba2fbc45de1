"""The outcome emitter: what the scoring loop hands the writer, and the step statistics it keeps."""

import queue
from types import SimpleNamespace

from services.offers.runs.recording import MemberOutcome
from services.offers.runs.stats import StepStats
from services.offers.runs.writer import OutcomeEmitter
from services.offers.statuses import MemberStatus


def outcome(member: int, ats_ms: float | None, offer_ms: float | None = 1.0) -> MemberOutcome:
    return MemberOutcome(member_id=f"m{member}", status=MemberStatus.SCORED, ats_ms=ats_ms, resp_ms=ats_ms,
                         offer_ms=offer_ms)


def test_step_statistics_are_those_of_one_add_per_member():
    # batches share their call's latency; per-member calls each have their own; failures have none
    latencies = [40.0] * 250 + [12.5] * 3 + [None] * 2 + [40.0, 7.25, 7.25, 99.0] + [0.0005] * 5
    writer = SimpleNamespace(queue=queue.Queue())
    steps = {name: StepStats(name) for name in ("ats", "resp", "offer")}
    emitter = OutcomeEmitter(writer, steps)
    for member, ms in enumerate(latencies):
        emitter(outcome(member, ms))
    emitter.flush()

    expected = StepStats("ats")
    for ms in latencies:
        if ms is not None:
            expected.add(ms)
    for name in ("ats", "resp"):
        assert steps[name].items == expected.items == len(latencies) - 2
        assert steps[name].latencies.counts == expected.latencies.counts
    assert steps["offer"].items == len(latencies)
    handed = []
    while not writer.queue.empty():
        handed.extend(o.member_id for o in writer.queue.get_nowait())
    assert handed == [f"m{i}" for i in range(len(latencies))]  # every outcome, in order, once
