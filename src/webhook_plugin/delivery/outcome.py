"""What one attempt comes to. Pure: no I/O, no clock.

:func:`classify` turns whatever happened to an attempt (an answer, or an
exception of any kind) into its :class:`Outcome`: succeeded, tried again at a
given time, or failed, and whether the endpoint is disabled, and why. The
dispatcher records it; the settings test (``PUT .../webhook?test=true``) shows
it. Both use this one function, so they cannot disagree.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

from ..exceptions import TransportError
from .client import Response
from .retry import RetryPolicy, parse_retry_after

__all__ = ["Outcome", "classify", "describe_error"]

#: the longest error text recorded (a receiver's text never goes into it)
_MAX_ERROR: Final = 300


class Outcome(NamedTuple):
    """The result of one attempt.

    ``status`` is ``succeeded``, ``pending`` (tried again at
    ``next_attempt_at``) or ``failed``. ``error`` is ``None`` on success, else
    a short stable code and a reason (``http_503``, ``timeout: ...``,
    ``protocol_error: ...``, ``internal_error: KeyError``), never with a
    header value or a secret in it.
    """

    status: Literal["succeeded", "pending", "failed"]
    error: str | None
    status_code: int | None
    next_attempt_at: float | None
    disable_reason: str | None


def describe_error(exc: BaseException) -> str:
    """The recorded text of an attempt that got no answer.

    Our transport errors say what went wrong in words we chose; anything else
    is a bug of ours and is named by its type only (its message might hold
    anything, a header value included).
    """
    if isinstance(exc, TransportError):
        return f"{exc.code}: {exc}"[:_MAX_ERROR]
    return f"internal_error: {type(exc).__name__}"


def classify(
    *,
    response: Response | None,
    error: BaseException | None,
    started: float,
    round_attempts: int,
    failing_since: float | None,
    policy: RetryPolicy,
) -> Outcome:
    """Decide what an attempt comes to.

    :param response: the answer, or ``None`` when there was none.
    :param error: what the attempt raised instead of answering.
    :param started: when the attempt started (Unix seconds).
    :param round_attempts: attempts made before this one in the current
        round (a redelivery starts a new round).
    :param failing_since: when the endpoint started failing without a
        success in between, if it is failing.
    :param policy: the retry schedule and when to disable an endpoint.
    """
    status_code = None
    retry_after = None
    if response is not None:
        status_code = response.status_code
        if 200 <= status_code < 300:
            return Outcome("succeeded", None, status_code, None, None)
        message = f"http_{status_code}"
        if status_code == 410:
            return Outcome("failed", message, status_code, None, "the receiver answered 410 Gone")
        retry_after = parse_retry_after(response.headers.get("retry-after"), started)
    elif error is not None:
        message = describe_error(error)
    else:
        message = "internal_error: no answer and no error"
    failing_for = started - failing_since if failing_since is not None else 0.0
    if failing_for >= policy.disable_after:
        reason = f"failing without a success for {failing_for / 3600:.0f} h"
        return Outcome("failed", message, status_code, None, reason)
    delay = policy.next_delay(round_attempts + 1, retry_after)
    if delay is None:
        return Outcome("failed", message, status_code, None, None)
    return Outcome("pending", message, status_code, started + delay, None)
