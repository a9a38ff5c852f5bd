"""What every delivery store provides, and the records it trades in.

A delivery store keeps the outbox, the claims, the attempts, the delivery
log and the agents' webhook settings; it knows deliveries, not
conversations (the reference runtime keeps its chat data in a store of its
own, :mod:`webhook_plugin.runtime.chat.store`, which may share the database).

The methods are *synchronous* and may block: the delivery engine calls them
in worker threads through anyio, in batches, so that one thread hop carries
many events. A backend must be safe to call from several worker threads at
once (it serialises writes itself).

Times are Unix seconds (``float``), always UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Literal, NamedTuple, Protocol, TypedDict, Unpack

import msgspec

from ..events import OperationalEventType, WebhookEventType
from ..payloads import OperationalEvent
from ..settings import WebhookSettings

__all__ = [
    "AttemptRecord",
    "AttemptResult",
    "ClaimedDelivery",
    "DeliveryRecord",
    "DEFAULT_REQUEUE_RATE",
    "FAILING_SHARES",
    "DELIVERY_STATUSES",
    "DeliveryStatus",
    "HeldEvents",
    "LogFilters",
    "Lease",
    "NewDelivery",
    "DeliveryStore",
    "Store",
]

#: ``held``: kept while the agent's endpoint is disabled, sent when it is
#: enabled again (or discarded, as the owner chooses)
DeliveryStatus = Literal["pending", "held", "succeeded", "failed"]
#: the shares of the auto-disable window after which a failing endpoint is
#: reported (``ENDPOINT_FAILING``), each once per failing spell
FAILING_SHARES: tuple[float, ...] = (0.01, 0.25, 0.75)
#: deliveries queued again (held ones sent, a recovered range) start this many
#: a second per agent, oldest first: live events keep flowing between them
DEFAULT_REQUEUE_RATE = 100.0
#: what enabling an endpoint again does with its held deliveries
HeldEvents = Literal["send", "discard"]
#: every status, in the order the log lists them
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "held", "succeeded", "failed")


class NewDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """An event on its way into the outbox."""

    webhook_id: str
    agent_id: str
    event_type: WebhookEventType | OperationalEventType
    body: bytes
    created_at: float
    next_attempt_at: float
    #: the conversation the event belongs to: its ``sequence`` is counted per
    #: agent and conversation, and written into ``body`` as it is stored
    conversation_id: str | None = None
    #: sent one at a time with the conversation's other ordered events
    #: (the agent's ``ordering = "conversation"`` when it was queued)
    ordered: bool = False
    #: its place in the conversation, numbered by the store as it is written
    sequence: int | None = None


class ClaimedDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """A due delivery leased to one dispatcher, with the endpoint as it is now."""

    id: int
    webhook_id: str
    agent_id: str
    #: an operational event goes to the agent's ``operations_url``
    event_type: WebhookEventType | OperationalEventType
    body: bytes
    created_at: float
    attempts: int
    #: attempts made in the current round (a redelivery starts a new round)
    round_attempts: int
    #: when the lease ends, on this process's monotonic clock (``time.monotonic()``,
    #: counted from before the claim: the database's lease never ends sooner)
    lease_until: float
    settings: WebhookSettings | None
    failing_since: float | None
    #: who holds the lease: the attempt's result is written only while it still does
    lease_owner: str | None = None
    #: an ordered delivery: until when (monotonic) it may keep failing at the
    #: head of its conversation before it is given up (``ordering_max_wait``,
    #: counted by the database from its first claim); None when unordered
    head_deadline: float | None = None


class LogFilters(TypedDict, total=False):
    """What the delivery log can be asked for
    (:meth:`DeliveryStore.list_deliveries`); every filter given must match."""

    agent_id: str | None
    status: DeliveryStatus | None
    #: at most this many (default 100)
    limit: int
    #: older than this delivery (the next page)
    before_id: int | None
    event_type: str | None
    conversation_id: str | None
    webhook_id: str | None
    #: created in ``[since, until)``, Unix seconds
    since: float | None
    until: float | None


class Lease(NamedTuple):
    """Who may take the fresh deliveries of an insert straight away, leased to
    it in the inserting transaction (no claim query in between): at most
    ``most`` of them, due at ``now``, for ``seconds``. The insert returns them."""

    owner: str
    seconds: float
    most: int
    now: float


class AttemptResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one attempt, as the dispatcher decided it."""

    delivery_id: int
    agent_id: str
    #: the attempt's number over the delivery's whole life (1 for the first)
    attempt: int
    started_at: float
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    #: ``pending`` (retry at ``next_attempt_at``), ``succeeded``, ``failed``, or
    #: ``held`` (its endpoint is disabled: kept until it is enabled again)
    status: DeliveryStatus
    next_attempt_at: float | None
    #: whether a request was actually sent (False for a delivery failed because
    #: its endpoint is gone or disabled)
    sent: bool = True
    #: set when this attempt disables the endpoint (410, or failing for too long)
    disable_reason: str | None = None
    #: the lease the attempt was made under: its result is dropped if another
    #: dispatcher holds the delivery now (None: written whoever holds it)
    lease_owner: str | None = None
    #: an ordered delivery: its end lets the next of its conversation go
    ordered: bool = False
    webhook_id: str = ""
    #: an operational event's delivery (to the ``operations_url``): its result
    #: never counts towards the endpoint's failing, disabling or operational events
    operations: bool = False
    #: how many of the failing shares (``FAILING_SHARES``) of the auto-disable
    #: window the endpoint's failures have lasted, at this attempt, counted from
    #: ``failing_since`` (the endpoint's failing spell as its claim read it)
    failing_level: int = 0
    failing_since: float | None = None
    #: where the request went, and the receiver's answer's headers (JSON, capped)
    url: str | None = None
    response_headers: str | None = None


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    started_at: float
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    url: str | None = None
    #: the answer's headers, as a JSON object (redacted, capped)
    response_headers: str | None = None
    #: what started it: ``scheduled`` (the first, or a retry), ``manual`` (the
    #: first of a redelivery), ``recovery`` (the first after a recover, or
    #: after its endpoint was enabled again)
    trigger: str = "scheduled"


class DeliveryRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the delivery log."""

    id: int
    webhook_id: str
    agent_id: str
    #: a plain ``str`` for a type this version does not know (the row was
    #: written by a newer one, and failed as ``unknown_event_type``)
    event_type: WebhookEventType | str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: float
    next_attempt_at: float | None
    body: bytes = b""
    conversation_id: str | None = None
    sequence: int | None = None


class DeliveryStore(Protocol):
    """A delivery store: outbox, claims, attempts, the delivery log, settings."""

    #: whether :meth:`wait_for_new` can wake a worker in another process
    supports_notify: ClassVar[bool]
    #: how many writes of one process may run at once (the engine's write lane)
    writers: ClassVar[int]

    # lifecycle ---------------------------------------------------------------
    def open(self) -> None: ...
    def close(self) -> None: ...

    # outbox and delivery log -------------------------------------------------
    def insert_deliveries(
        self, items: Sequence[NewDelivery], lease: Lease | None = None
    ) -> list[ClaimedDelivery]:
        """Queue ``items`` in one transaction; with ``lease``, return those leased
        to its owner as they were inserted."""
        ...

    def claim_due(
        self,
        *,
        limit: int,
        lease_seconds: float,
        owner: str,
        skip_agents: Sequence[str] = (),
    ) -> list[ClaimedDelivery]:
        """Lease due deliveries to ``owner`` for ``lease_seconds``, oldest first,
        leaving out ``skip_agents`` (endpoints that already have more work at
        hand than they can take). What is due and when a lease ends are the
        database's clock's to say, never the caller's."""
        ...

    def record_attempts(self, results: Sequence[AttemptResult]) -> list[OperationalEvent]:
        """Write the attempts' results; the operational events they caused, each
        decided once, in this transaction (and queued to the agent's
        ``operations_url`` with it)."""
        ...

    def release(self, delivery_ids: Sequence[int], owner: str) -> None: ...
    def wait_for_new(self, timeout: float) -> bool: ...
    def list_deliveries(self, **filters: Unpack[LogFilters]) -> list[DeliveryRecord]:
        """The log, newest first: ``limit`` deliveries older than ``before_id``
        that match every filter given (``since``/``until``: created in
        ``[since, until)``)."""
        ...

    def get_delivery(self, delivery_id: int) -> DeliveryRecord: ...
    def list_attempts(self, delivery_id: int) -> list[AttemptRecord]: ...
    def attempt_stats(
        self, agent_id: str, *, since: float, bucket_seconds: float, buckets: int
    ) -> list[tuple[int, int, int, float, float]]:
        """Attempts to an agent's endpoint since ``since`` per time bucket:
        ``(bucket, attempts, succeeded, average ms, longest ms)``."""
        ...

    def redeliver(self, delivery_id: int, *, now: float) -> DeliveryRecord: ...
    def redeliver_failed(self, *, agent_id: str | None, since: float, now: float) -> int: ...
    def recover(
        self,
        agent_id: str,
        *,
        since: float,
        until: float | None = None,
        event_types: Sequence[str] | None = None,
        rate: float = DEFAULT_REQUEUE_RATE,
        dry_run: bool = False,
    ) -> int:
        """Queue again every ``failed`` or ``held`` delivery of the agent created
        in ``[since, until)`` (of ``event_types``), oldest first, ``rate`` a
        second; how many. Those already pending are left as they are, so a
        second call queues nothing twice. ``dry_run``: only count them."""
        ...

    def expire_held(self, *, max_count: int, max_age: float, now: float) -> int:
        """Fail held deliveries beyond the bounds: per agent, all but the newest
        ``max_count``, and those created before ``now - max_age``; how many."""
        ...

    def count_deliveries(self, agent_id: str | None = None) -> dict[str, int]:
        """How many deliveries are in each state (of one agent's, or all)."""
        ...

    def backlog(self) -> tuple[int, float | None]:
        """Pending deliveries: how many, and the oldest one's ``created_at``."""
        ...

    def purge(self, *, before: float, batch: int = 1000) -> int: ...

    # settings ------------------------------------------------------------------
    def get_settings(self, agent_id: str) -> WebhookSettings | None: ...
    def ping(self) -> None:
        """Raise :class:`~webhook_plugin.exceptions.StorageError` when the database
        does not answer."""
        ...

    def ping_write(self, wait: float) -> None:
        """Raise :class:`~webhook_plugin.exceptions.StorageError` unless a write
        transaction can begin within ``wait`` seconds (it is rolled back)."""
        ...

    def update_settings(
        self,
        agent_id: str,
        change: Callable[[WebhookSettings | None], WebhookSettings],
        *,
        held_events: HeldEvents = "send",
        rate: float = DEFAULT_REQUEUE_RATE,
    ) -> WebhookSettings:
        """Read, change and write one agent's settings atomically; written enabled,
        its held deliveries are queued again (``rate`` a second, oldest first)
        or failed (``held_events="discard"``) in the same transaction."""
        ...

    def all_settings(self) -> dict[str, WebhookSettings]: ...


#: the name the engine and host apps have always used
Store = DeliveryStore
