"""One attempt: sign, POST, classify, log, and the result to record.

The dispatcher decides *when* a delivery is attempted; this module decides
what an attempt is. Whatever the receiver answers and whatever the attempt
raises, :func:`attempt` returns an :class:`AttemptResult`: a bug of ours costs
one attempt, recorded and retried like any failure, never the worker.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Final

import msgspec
import structlog

from ..events import OperationalEventType
from ..exceptions import RequestTimeout, TransportError
from ..settings import WebhookSettings
from ..storage.base import FAILING_SHARES, AttemptResult, ClaimedDelivery, DeliveryStatus
from .client import HttpClient, Response
from .outcome import Outcome, classify
from .redaction import might_hold, redact, secrets_of
from .retry import RetryPolicy
from .signing import signed_headers

__all__ = ["Attempted", "attempt", "destination", "give_up"]

log = structlog.get_logger("webhook_plugin.delivery")

#: the most of a receiver's answer kept in the delivery log
_EXCERPT_BYTES: Final = 512


class Attempted:
    """What the dispatcher needs to know of one attempt, besides its result."""

    __slots__ = ("duration", "outcome", "result", "timed_out")

    def __init__(
        self, result: AttemptResult, outcome: Outcome, duration: float, timed_out: bool
    ) -> None:
        self.result = result
        self.outcome = outcome
        #: seconds, measured on the monotonic clock
        self.duration = duration
        self.timed_out = timed_out


async def attempt(
    d: ClaimedDelivery,
    settings: WebhookSettings,
    *,
    client: HttpClient,
    timeout: float,
    policy: RetryPolicy,
    clock: Callable[[], float],
    url: str | None = None,
) -> Attempted:
    """POST ``d`` to its endpoint (or ``url``), signed, and say what came of it."""
    url = url or settings.url
    assert url is not None
    started = clock()
    t0 = time.perf_counter()
    response: Response | None = None
    error: Exception | None = None
    try:
        headers = signed_headers(settings, d.webhook_id, started, d.body)
        response = await client.post(url, headers, d.body, timeout=timeout, max_body=_EXCERPT_BYTES)
    except Exception as exc:
        error = exc
        if not isinstance(exc, TransportError):
            log.error(
                "delivery.internal_error",
                agent_id=d.agent_id,
                webhook_id=d.webhook_id,
                error_type=type(exc).__name__,
                exc_info=exc,
            )
    duration = time.perf_counter() - t0
    operations = d.event_type in OperationalEventType
    outcome = classify(
        response=response,
        error=error,
        started=started,
        round_attempts=d.round_attempts,
        # the operations URL is judged on its own answers, never by how long
        # the agent's webhook endpoint has been failing
        failing_since=None if operations else d.failing_since,
        policy=policy,
    )
    if operations and outcome.disable_reason:
        # the operations URL's answers never disable the agent's endpoint
        outcome = outcome._replace(status="failed", disable_reason=None)
    if (
        outcome.status == "pending"
        and d.head_deadline is not None
        and time.monotonic() >= d.head_deadline
    ):
        # the head of an ordered conversation kept failing for too long: given
        # up, so that the events after it go (each keeps its sequence: the
        # receiver sees the gap)
        outcome = outcome._replace(
            status="failed",
            next_attempt_at=None,
            error=f"{outcome.error} (ordering_max_wait: given up at the head of its conversation)",
        )
    _log(d, outcome, started, duration)
    excerpt = None
    if response is not None and response.body:
        # a receiver that echoes requests (as httpbin does) must not put our
        # header or secret into the delivery log
        excerpt = redact(response.body.decode("utf-8", "replace"), secrets_of(settings))
        # PostgreSQL refuses NUL in text: one receiver answering with one would
        # fail the write of every result recorded with its own
        excerpt = excerpt.replace("\x00", "\ufffd")
    result = AttemptResult(
        delivery_id=d.id,
        agent_id=d.agent_id,
        attempt=d.attempts + 1,
        started_at=started,
        duration_ms=duration * 1000,
        status_code=outcome.status_code,
        error=outcome.error and outcome.error.replace("\x00", "\ufffd"),
        response_excerpt=excerpt,
        # the attempt that disables its endpoint is held with the others, to be
        # sent once the owner enables it again
        status="held" if outcome.disable_reason else outcome.status,
        next_attempt_at=outcome.next_attempt_at,
        disable_reason=outcome.disable_reason,
        lease_owner=d.lease_owner,
        ordered=d.head_deadline is not None,
        webhook_id=d.webhook_id,
        operations=operations,
        failing_level=0 if operations else _failing_level(d.failing_since, started, policy),
        failing_since=d.failing_since,
        url=url,
        response_headers=None if response is None else _headers_json(response, settings),
    )
    return Attempted(result, outcome, duration, timed_out=isinstance(error, RequestTimeout))


def destination(d: ClaimedDelivery, *, now: float) -> tuple[WebhookSettings, str] | AttemptResult:
    """Where ``d`` goes, with the settings it is signed with; or, when it is not
    to be sent, its result: held (its endpoint is disabled), or failed (the
    endpoint is gone, or cannot sign)."""
    settings = d.settings
    if d.event_type in OperationalEventType:
        # to the operations URL, without the owner's webhook header (it is for
        # the webhook's receiver); sent whether the endpoint is disabled
        url = settings.operations_url if settings is not None else None
        if settings is None or url is None:
            return give_up(d, "endpoint_removed: the agent has no operations URL", now=now)
        settings = msgspec.structs.replace(settings, header=None)
    elif settings is None or settings.url is None:
        return give_up(d, "endpoint_removed: the agent has no webhook URL", now=now)
    elif settings.disabled:
        reason = f"endpoint_disabled: {settings.disabled_reason or 'disabled'}"
        return give_up(d, reason, now=now, status="held")
    else:
        url = settings.url
    if settings.signing_secret is None:  # a row written by hand or by another program
        return give_up(d, "endpoint_unsigned: the agent's settings have no signing secret", now=now)
    return settings, url


def give_up(
    d: ClaimedDelivery, error: str, *, now: float, status: DeliveryStatus = "failed"
) -> AttemptResult:
    """The result of a delivery ended without an attempt: failed (its endpoint is
    gone), or ``held`` (its endpoint is disabled)."""
    log.warning(
        "delivery.held" if status == "held" else "delivery.failed",
        agent_id=d.agent_id,
        event_type=str(d.event_type),
        webhook_id=d.webhook_id,
        error=error,
    )
    return AttemptResult(
        delivery_id=d.id,
        agent_id=d.agent_id,
        attempt=d.attempts,
        started_at=now,
        duration_ms=0.0,
        status_code=None,
        error=error,
        response_excerpt=None,
        status=status,
        next_attempt_at=None,
        sent=False,
        lease_owner=d.lease_owner,
        ordered=d.head_deadline is not None,
        webhook_id=d.webhook_id,
        operations=d.event_type in OperationalEventType,
    )


#: the most of a receiver's answer's headers kept in the delivery log
_HEADER_BYTES: Final = 2048


def _headers_json(response: Response, settings: WebhookSettings) -> str:
    """The answer's headers as JSON for the log: redacted (a receiver may echo our
    header), NULs replaced (PostgreSQL refuses them), cut at :data:`_HEADER_BYTES`."""
    secrets = secrets_of(settings)
    text = msgspec.json.encode(response.headers).decode()
    raw = "\n".join(f"{name}\n{value}" for name, value in response.headers.items())
    if len(text) <= _HEADER_BYTES and not might_hold(raw, secrets):
        return text  # (most answers: nothing to take out, nothing to cut)
    # each value redacted whole before anything is cut: a cut secret would no
    # longer be found
    shown = {
        redact(name, secrets): redact(value, secrets) for name, value in response.headers.items()
    }
    text = json.dumps(shown, ensure_ascii=False)
    if len(text) > _HEADER_BYTES:
        kept: dict[str, str] = {}
        for name, value in shown.items():
            kept[name[:100]] = value[:200]
            if len(json.dumps(kept, ensure_ascii=False)) > _HEADER_BYTES - 40:
                kept.pop(name[:100])
                kept["…"] = "cut"
                break
        text = json.dumps(kept, ensure_ascii=False)
    return text


def _failing_level(failing_since: float | None, now: float, policy: RetryPolicy) -> int:
    """How many of :data:`FAILING_SHARES` of the auto-disable window an endpoint
    failing since ``failing_since`` has been failing, at ``now``."""
    if failing_since is None:
        return 0
    failing_for = now - failing_since
    return sum(failing_for >= share * policy.disable_after for share in FAILING_SHARES)


def _debug_logged() -> bool:
    """Whether a ``debug`` line would be written (a logger that cannot say: yes)."""
    is_enabled_for = getattr(log, "is_enabled_for", None)
    return is_enabled_for is None or bool(is_enabled_for(logging.DEBUG))


def _log(d: ClaimedDelivery, outcome: Outcome, started: float, duration: float) -> None:
    if outcome.status == "succeeded" and not outcome.disable_reason and not _debug_logged():
        return  # the line would be dropped: not worth its fields on every delivery
    fields = {
        "agent_id": d.agent_id,
        "event_type": str(d.event_type),
        "webhook_id": d.webhook_id,
        "attempt": d.attempts + 1,
        "status": outcome.status_code,
        "duration_ms": round(duration * 1000, 1),
    }
    if outcome.status == "succeeded":
        # one line per delivery is the delivery log's job (and the metrics'): at
        # info it cost a tenth of the event loop under load
        log.debug("delivery.succeeded", **fields)
    elif outcome.status == "pending":
        assert outcome.next_attempt_at is not None
        log.info(
            "delivery.retry_scheduled",
            error=outcome.error,
            retry_in=round(outcome.next_attempt_at - started, 3),
            **fields,
        )
    else:
        log.warning("delivery.failed", error=outcome.error, **fields)
    if outcome.disable_reason:
        log.warning("endpoint.disabled", agent_id=d.agent_id, reason=outcome.disable_reason)
