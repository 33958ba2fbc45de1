"""wait_for: every check until all pass or the time is up; a check that passed is not asked again."""

from services.waiting import wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_checks_run_until_each_passes_and_a_passed_one_is_not_asked_again():
    clock, asked = FakeClock(), {"a": 0, "b": 0}

    def a():
        asked["a"] += 1
        return None

    def b():
        asked["b"] += 1
        return None if asked["b"] == 3 else "starting up"

    heard = []
    outcome = wait_for({"a": a, "b": b}, 10, interval_s=0.5, on_pending=lambda p, t: heard.append((p, t)),
                       clock=clock, sleep=clock.sleep)
    assert outcome.ready and outcome.pending == {} and outcome.waited_s == 1.0
    assert asked == {"a": 1, "b": 3}
    assert heard == [({"b": "starting up"}, 0.0), ({"b": "starting up"}, 0.5)]


def test_a_check_that_raises_is_pending_with_its_reason_and_the_wait_ends_at_the_timeout():
    clock = FakeClock()

    def broken():
        raise ConnectionRefusedError(111, "Connection refused")

    outcome = wait_for({"db": broken}, 2, interval_s=0.5, clock=clock, sleep=clock.sleep)
    assert not outcome.ready and outcome.waited_s == 2.0
    assert outcome.pending == {"db": "ConnectionRefusedError: [Errno 111] Connection refused"}
