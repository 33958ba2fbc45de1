"""The one retry decision both clients make: urllib3's Retry from the policy, then next_wait."""

import time

import pytest
from urllib3.exceptions import MaxRetryError, NewConnectionError

from services.http.aio import AsyncHttpClient
from services.http.policy import HttpPolicy, next_wait, retry_of
from services.http.sync import DeadlineRetry, build_session

POLICY = HttpPolicy(retries=3, connect_retries=1, backoff_factor_s=0.1, backoff_jitter_s=0.0, backoff_max_s=0.3,
                    retry_after_max_s=2.0, retry_post=True)


class Answer:
    def __init__(self, status, headers=None):
        self.status, self.headers = status, headers or {}

    def get_redirect_location(self):
        return False


def budgets(retry):
    return (retry.total, retry.connect, retry.read, retry.status, retry.other, retry.redirect,
            retry.allowed_methods, retry.status_forcelist, retry.backoff_factor, retry.backoff_max)


def test_both_clients_count_attempts_with_the_same_urllib3_retry():
    sync_retry = build_session(POLICY).get_adapter("http://x/").max_retries
    assert isinstance(sync_retry, DeadlineRetry)
    assert budgets(sync_retry) == budgets(AsyncHttpClient("u", "http://x", POLICY)._retry) == budgets(retry_of(POLICY))
    assert "POST" in sync_retry.allowed_methods  # the policy says its POSTs are idempotent


def test_the_wait_is_retry_after_capped_else_backoff_and_no_retry_outlives_the_deadline():
    retry = retry_of(POLICY).increment("GET", "/x", response=Answer(503, {"Retry-After": "3600"}))
    assert next_wait(retry, url="/x", response=Answer(503, {"Retry-After": "3600"}), deadline=None,
                     attempt_s=0.1) == 2.0  # the upstream's advice, capped
    retry = retry.increment("GET", "/x", response=Answer(500))
    assert next_wait(retry, url="/x", response=Answer(500), deadline=None, attempt_s=0.1) == pytest.approx(0.2)
    with pytest.raises(MaxRetryError):  # 0.2 s of backoff and a 0.5 s attempt do not fit in 0.3 s
        next_wait(retry, url="/x", response=Answer(500), deadline=time.monotonic() + 0.3, attempt_s=0.5)


def test_connect_failures_have_their_own_budget_within_the_total():
    retry = retry_of(POLICY).increment("POST", "/x", error=NewConnectionError(None, "refused"))
    with pytest.raises(MaxRetryError):  # connect_retries=1: the second refusal ends the call
        retry.increment("POST", "/x", error=NewConnectionError(None, "refused"))
