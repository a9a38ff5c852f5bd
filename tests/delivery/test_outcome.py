"""``classify``: whatever an attempt meets, one outcome; the dispatcher and the
settings test share it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook_plugin.delivery.client import Response
from webhook_plugin.delivery.outcome import classify, describe_error
from webhook_plugin.delivery.retry import RetryPolicy
from webhook_plugin.exceptions import ConnectError, ProtocolError, RequestTimeout

POLICY = RetryPolicy(schedule=(0, 5, 300), jitter=0.0, disable_after=3600.0)


def outcome(response=None, error=None, *, round_attempts=0, failing_since=None):  # type: ignore[no-untyped-def]
    return classify(
        response=response,
        error=error,
        started=1000.0,
        round_attempts=round_attempts,
        failing_since=failing_since,
        policy=POLICY,
    )


def answer(status: int, **headers: str) -> Response:
    return Response(status, {k.replace("_", "-"): v for k, v in headers.items()}, b"")


def test_a_2xx_succeeds() -> None:
    assert outcome(answer(204)) == ("succeeded", None, 204, None, None)


def test_failures_are_retried_on_the_schedule_then_failed() -> None:
    first = outcome(answer(503))
    assert (first.status, first.error, first.next_attempt_at) == ("pending", "http_503", 1005.0)
    assert outcome(answer(503), round_attempts=1).next_attempt_at == 1300.0
    assert outcome(answer(503), round_attempts=2).status == "failed"


def test_retry_after_is_honoured_and_junk_in_it_ignored() -> None:
    assert outcome(answer(429, retry_after="60")).next_attempt_at == 1060.0
    # U+00B2 passes str.isdigit(); it once killed the engine
    for junk in ("\xb2", "٣", "-1", "1e3", "soon", "x" * 10_000, "Wed, 99 Foo 99999"):
        assert outcome(answer(503, retry_after=junk)).next_attempt_at == 1005.0


def test_410_disables_the_endpoint() -> None:
    gone = outcome(answer(410))
    assert (gone.status, gone.disable_reason) == ("failed", "the receiver answered 410 Gone")


def test_an_endpoint_failing_too_long_is_disabled() -> None:
    late = outcome(answer(500), failing_since=1000.0 - 3600)
    assert late.status == "failed" and late.disable_reason is not None
    assert "1 h" in late.disable_reason


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (RequestTimeout("no complete answer within 2 s"), "timeout: no complete answer"),
        (ConnectError("refused"), "connect_error: refused"),
        (ProtocolError("invalid answer"), "protocol_error: invalid answer"),
        # a bug of ours is named by its type only: its message might hold anything
        (UnicodeEncodeError("latin-1", "Bearer ключ", 7, 8, "x"), "internal_error: Unicode"),
        (KeyError("whsec_secret"), "internal_error: KeyError"),
    ],
)
def test_errors_become_recorded_failures(error: Exception, text: str) -> None:
    result = outcome(error=error)
    assert result.status == "pending" and result.error is not None
    assert result.error.startswith(text)
    assert "ключ" not in result.error and "whsec" not in result.error


@given(
    status=st.integers(100, 999),
    retry_after=st.text(max_size=40),
    round_attempts=st.integers(0, 10),
    failing_for=st.none() | st.floats(0, 1e9),
)
def test_every_answer_has_an_outcome(
    status: int, retry_after: str, round_attempts: int, failing_for: float | None
) -> None:
    result = outcome(
        answer(status, retry_after=retry_after),
        round_attempts=round_attempts,
        failing_since=None if failing_for is None else 1000.0 - failing_for,
    )
    assert result.status in ("succeeded", "pending", "failed")
    assert (result.status == "pending") == (result.next_attempt_at is not None)
    if result.next_attempt_at is not None:
        assert 1000.0 <= result.next_attempt_at <= 1000.0 + 86400.0 + 300


def test_describe_error_is_bounded() -> None:
    assert len(describe_error(ProtocolError("x" * 10_000))) <= 300
