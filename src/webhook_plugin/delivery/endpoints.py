"""The settings service: each agent's endpoint, saved, cached, rotated and tested.

:class:`Endpoints` owns the in-memory settings cache that the hook path
reads without I/O, and every write to the settings: a save, a secret
rotation, an endpoint disabled by its answers. Each write is one
transaction that reads and changes the stored settings
(:meth:`~webhook_plugin.storage.base.Store.update_settings`), and the cache
follows the database's order, so a rotation and a save never undo each
other.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal

import anyio
import msgspec
import structlog

from ..exceptions import NotFound, TransportError
from ..payloads import WebhookTest
from ..settings import WebhookSettings, generate_secret
from ..storage.base import DEFAULT_REQUEUE_RATE, AttemptResult, HeldEvents, Store
from ._blocking import Blocking
from .client import HttpClient, Response
from .outcome import classify
from .retry import RetryPolicy
from .signing import new_webhook_id, signed_headers

__all__ = ["EndpointTest", "Endpoints"]

log = structlog.get_logger("webhook_plugin.delivery")


class EndpointTest(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """How a settings test went (:meth:`Endpoints.test`).

    ``status`` is ``ok`` (a 2xx answer in time), ``slow`` (a 2xx answer, but
    later than the test's ``slow_after``) or ``unreachable`` (no 2xx answer:
    refused or blocked address, TLS or connection error, timeout, or another
    status, given in ``status_code``). ``error`` says why, never with a header
    value in it.
    """

    status: Literal["ok", "slow", "unreachable"]
    status_code: int | None
    duration_ms: float
    error: str | None


class Endpoints:
    """Agents' endpoint settings: the cache, the writes and the test request.

    :param store: where the settings live.
    :param blocking: runs the store's blocking calls.
    :param client: sends the test request.
    :param policy: decides what an answer means (shared with the dispatcher).
    :param timeout: seconds for the test request.
    :param rotation_grace: default seconds the old secret keeps signing after a rotation.
    """

    def __init__(
        self,
        store: Store,
        blocking: Blocking,
        client: HttpClient,
        *,
        policy: RetryPolicy,
        timeout: float,
        rotation_grace: float,
        requeue_rate: float = DEFAULT_REQUEUE_RATE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._requeue_rate = requeue_rate
        self._store = store
        self._blocking = blocking
        self._client = client
        self._policy = policy
        self._timeout = timeout
        self._rotation_grace = rotation_grace
        self._clock = clock
        self._cache: dict[str, WebhookSettings] = {}
        #: held while settings are written and cached, so the cache follows the database
        self._lock = anyio.Lock()

    # the cache ------------------------------------------------------------------------------

    def cached(self, agent_id: str) -> WebhookSettings | None:
        """The agent's settings from memory (no I/O): the hook path's view."""
        return self._cache.get(agent_id)

    async def reload(self) -> None:
        """Read every agent's settings again (other processes may change them)."""
        async with self._lock:  # never older than a save just made
            self._cache = await self._blocking(self._store.all_settings)

    def disabled_by(self, results: Sequence[AttemptResult]) -> None:
        """Endpoints that attempts just disabled (410, failing for too long) are
        disabled in the cache too; the recorder wrote the same to the store."""
        for r in results:
            if r.disable_reason:
                current = self._cache.get(r.agent_id)
                if current is not None:
                    self._cache[r.agent_id] = msgspec.structs.replace(
                        current, disabled=True, disabled_reason=r.disable_reason
                    )

    # reads and writes -----------------------------------------------------------------------

    async def get(self, agent_id: str) -> WebhookSettings | None:
        return await self._blocking(self._store.get_settings, agent_id)

    async def _update(
        self,
        agent_id: str,
        change: Callable[[WebhookSettings | None], WebhookSettings],
        held_events: HeldEvents = "send",
    ) -> WebhookSettings:
        async with self._lock:
            updated = await self._blocking.write(
                functools.partial(
                    self._store.update_settings,
                    agent_id,
                    change,
                    held_events=held_events,
                    rate=self._requeue_rate,
                )
            )
            self._cache[agent_id] = updated
        return updated

    async def save_reporting(
        self, agent_id: str, settings: WebhookSettings, *, held_events: HeldEvents = "send"
    ) -> tuple[WebhookSettings, str | None]:
        """Store an agent's settings (enabling its endpoint again) and use them at
        once; the settings saved, and the signing secret this save generated (the
        agent's first), which its owner is shown once.

        The deliveries held while the endpoint was disabled are queued again,
        oldest first (``held_events="send"``), or failed (``"discard"``), in
        the same transaction.

        A settings object without a signing secret keeps the current one (and a
        rotation's grace period with it), or gets a new one when there is none.
        A *different* secret replaces the current one at once, with no grace
        period: the way to cut off a secret that leaked. The current secret is
        read in the same transaction that writes, so a rotation running at the
        same time is never undone.
        """

        generated: list[str] = []  # decided in the writing transaction

        def change(current: WebhookSettings | None) -> WebhookSettings:
            generated.clear()
            secret = settings.signing_secret
            if secret is None and current is not None:
                secret = current.signing_secret
            if secret is None:
                secret = generate_secret()
                generated.append(secret)
            if current is not None and secret is not None and secret == current.signing_secret:
                previous = current.previous_signing_secret
                expires_at = current.previous_secret_expires_at
            else:
                previous = expires_at = None
            return msgspec.structs.replace(
                settings,
                signing_secret=secret,
                previous_signing_secret=previous,
                previous_secret_expires_at=expires_at,
                disabled=False,
                disabled_reason=None,
            )

        saved = await self._update(agent_id, change, held_events)
        log.info("settings.saved", agent_id=agent_id, url_set=saved.url is not None)
        return saved, generated[0] if generated else None

    async def rotate_secret(self, agent_id: str, *, grace: float | None = None) -> str:
        """Give the agent a new signing secret; later attempts are signed with it.

        For ``grace`` seconds (default: the config's ``secret_rotation_grace``)
        they carry a second signature made with the old secret, as Standard
        Webhooks allows, so a receiver still checking the old secret accepts them
        until it is updated. ``grace=0`` drops the old secret at once. One
        transaction reads and writes the settings: a settings save running at
        the same time cannot write the old secret back.

        :raises NotFound: when the agent has no settings.
        """
        grace = self._rotation_grace if grace is None else grace
        secret = generate_secret()
        now = self._clock()

        def change(current: WebhookSettings | None) -> WebhookSettings:
            if current is None:
                raise NotFound(f"agent {agent_id!r} has no webhook settings")
            return msgspec.structs.replace(
                current,
                signing_secret=secret,
                previous_signing_secret=current.signing_secret if grace > 0 else None,
                previous_secret_expires_at=now + grace if grace > 0 else None,
            )

        await self._update(agent_id, change)
        log.info("settings.secret_rotated", agent_id=agent_id)
        return secret

    # the test request -----------------------------------------------------------------------

    async def test(self, agent_id: str, *, slow_after: float = 5.0) -> EndpointTest:
        """Send the agent's URL one signed test request, as a settings page does on save.

        The body is ``{"eventType": "WEBHOOK_TEST", "agentId", "createdAt"}``,
        signed and sent with the agent's header like any delivery, within the
        attempt timeout, through the network guard. It is not queued, retried or
        written to the delivery log. Its answer is judged by the same
        :func:`~webhook_plugin.delivery.outcome.classify` as every delivery.

        :raises NotFound: when the agent has no webhook URL.
        """
        settings = await self.get(agent_id)
        if settings is None or settings.url is None:
            raise NotFound(f"agent {agent_id!r} has no webhook URL")
        now = self._clock()
        body = msgspec.json.encode(
            WebhookTest(agent_id=agent_id, created_at=datetime.fromtimestamp(now, UTC))
        )
        response: Response | None = None
        error: Exception | None = None
        t0 = time.perf_counter()
        try:
            headers = signed_headers(settings, new_webhook_id(), now, body)
            response = await self._client.post(
                settings.url, headers, body, timeout=self._timeout, max_body=512
            )
        except Exception as exc:
            error = exc
            if not isinstance(exc, TransportError):
                log.error(
                    "endpoint.test_internal_error",
                    agent_id=agent_id,
                    error_type=type(exc).__name__,
                    exc_info=exc,
                )
        outcome = classify(
            response=response,
            error=error,
            started=now,
            round_attempts=0,
            failing_since=None,
            policy=self._policy,
        )
        seconds = time.perf_counter() - t0
        status: Literal["ok", "slow", "unreachable"] = "unreachable"
        if outcome.status == "succeeded":
            status = "slow" if seconds > slow_after else "ok"
        result = EndpointTest(
            status=status,
            status_code=outcome.status_code,
            duration_ms=round(seconds * 1000, 1),
            error=outcome.error,
        )
        log.info(
            "endpoint.tested",
            agent_id=agent_id,
            status=status,
            status_code=outcome.status_code,
            duration_ms=result.duration_ms,
        )
        return result
