from __future__ import annotations

import pytest

from webhook_plugin.delivery.retry import DEFAULT_SCHEDULE, RetryPolicy, parse_retry_after


def test_default_schedule_is_standard_webhooks() -> None:
    assert DEFAULT_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    assert RetryPolicy().attempts == 10


@pytest.mark.parametrize("r", [0.0, 0.5, 0.999999])
def test_jitter_stays_within_twenty_percent(r: float) -> None:
    policy = RetryPolicy(rand=lambda: r)
    for made, base in enumerate(DEFAULT_SCHEDULE[1:], start=1):
        delay = policy.next_delay(made)
        assert delay is not None and base * 0.8 <= delay <= base * 1.2


def test_no_attempt_after_the_last() -> None:
    policy = RetryPolicy(schedule=(0, 1, 2), jitter=0)
    assert [policy.next_delay(n) for n in (1, 2, 3)] == [1, 2, None]


def test_retry_after_is_a_floor_within_bounds() -> None:
    policy = RetryPolicy(schedule=(0, 5, 10), jitter=0, max_retry_after=3600)
    assert policy.next_delay(1, retry_after=60) == 60  # later than scheduled: honoured
    assert policy.next_delay(1, retry_after=1) == 5  # earlier: never sooner than the schedule
    assert policy.next_delay(1, retry_after=10**9) == 3600  # bounded


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", now=0) == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 30) == 30
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        RetryPolicy(schedule=())
    with pytest.raises(ValueError, match=">= 0"):
        RetryPolicy(schedule=(0, -1))
