"""The one retry policy: exponential backoff, cap, attempts, jitter bounds, Retry-After (seconds and HTTP-date)."""

from __future__ import annotations

import email.utils
import time

import pytest
from pydantic import ValidationError

from dicom_node.net.retry import RetryPolicy, parse_retry_after

# --- the schedule (moved from test_delivery_rules.py) ----------------------------------------------


def test_default_backoff_schedule_doubles_from_30_s_to_a_600_s_cap() -> None:
    policy = RetryPolicy()
    assert policy.attempts == 10
    assert [policy.delay(n) for n in range(1, policy.attempts)] == [30, 60, 120, 240, 480, 600, 600, 600, 600]
    assert policy.delay(0) == 0.0
    assert policy.delay(10_000) == 600.0


def test_backoff_is_configurable() -> None:
    policy = RetryPolicy(attempts=4, initial=5, factor=3, cap=100)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [5, 15, 45, 100]


def test_attempts_bound_the_retries_and_next_attempt_is_a_time() -> None:
    policy = RetryPolicy(attempts=3, initial=30, cap=600)
    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert policy.next_attempt_at(2, now=1000.0) == 1060.0
    with pytest.raises(ValidationError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValidationError):
        RetryPolicy(jitter=1.5)


# --- jitter ---------------------------------------------------------------------------------------------


def test_jitter_only_adds_and_stays_within_its_fraction() -> None:
    policy = RetryPolicy(initial=10, cap=100, jitter=0.25)
    assert policy.delay(1, uniform=lambda: 0.0) == 10.0
    assert policy.delay(1, uniform=lambda: 0.999) == pytest.approx(12.4975)
    assert policy.delay(5, uniform=lambda: 0.5) == pytest.approx(100 * 1.125)  # the cap, then jitter on top
    samples = [policy.delay(2) for _ in range(500)]
    assert all(20.0 <= s < 25.0 for s in samples)
    assert len(set(samples)) > 100  # really random, so retries that failed together spread out


def test_no_jitter_means_the_exact_schedule() -> None:
    assert {RetryPolicy(initial=1, cap=300).delay(3) for _ in range(50)} == {4.0}


# --- Retry-After (RFC 9110 10.2.3) -----------------------------------------------------------------------


def test_retry_after_seconds_and_http_date() -> None:
    now = time.time()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert 29 <= (parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) or 0) <= 31
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now) == 0.0  # in the past: now
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111777.0) == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111777.0 - 5) == 5.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("-5") is None


def test_a_longer_retry_after_wins_up_to_the_cap() -> None:
    policy = RetryPolicy(initial=0.2, cap=2.0)
    assert policy.delay(3, retry_after=1.0) == 1.0  # beats the 0.8 s backoff
    assert policy.delay(3, retry_after=0.1) == pytest.approx(0.8)  # a shorter one does not shorten the backoff
    assert policy.delay(1, retry_after=3600.0) == 2.0  # a server cannot park work beyond the cap
    assert policy.next_attempt_at(1, now=100.0, retry_after=1.5) == 101.5
