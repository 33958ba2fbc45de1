"""Statistics of an offers run (``runs.stats``)."""

from services.offers.runs.stats import StepLatencies, StepStats


def test_step_latencies_give_the_statistics_of_one_add_per_member():
    # batches share their call's latency; per-member calls each have their own; None: step not reached
    latencies = [40.0] * 250 + [12.5] * 3 + [None] * 2 + [40.0, 7.25, 7.25, 99.0] + [0.0005] * 5
    steps = {"ats": StepStats("ats")}
    recorder = StepLatencies(steps)
    for ms in latencies:
        recorder.add("ats", ms)
    recorder.flush()

    expected = StepStats("ats")
    for ms in latencies:
        if ms is not None:
            expected.add(ms)
    assert steps["ats"].items == expected.items == len(latencies) - 2
    assert steps["ats"].latencies.counts == expected.latencies.counts


def test_nothing_is_added_until_flushed_or_the_latency_changes():
    steps = {"resp": StepStats("resp")}
    recorder = StepLatencies(steps)
    for _ in range(1000):
        recorder.add("resp", 31.5)
    assert steps["resp"].items == 0  # one batch's members: still one pending run
    recorder.add("resp", 29.0)
    assert steps["resp"].items == 1000
    recorder.flush()
    recorder.flush()  # a second flush adds nothing again
    assert steps["resp"].items == 1001
