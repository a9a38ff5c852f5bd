"""A user message's ``messageId``, reserved while one request works on it.

A client retrying a request it got no answer to gets the first answer again:
the first request reserves the id, a retry meanwhile waits for its answer.
The reservation is renewed every :data:`HEARTBEAT` seconds while its message
is worked on, so one left by a request (or a server) that died goes stale
after :data:`STALE_RESERVATION` seconds and a retry takes the message over.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import msgspec
import structlog

from ..exceptions import WebhookPluginError
from .chat_store import ChatStore

__all__ = ["HEARTBEAT", "STALE_RESERVATION", "WAIT_FOR_TWIN", "Conflict", "Reservations"]

log = structlog.get_logger("webhook_plugin.runtime")

#: how long a retry waits for the first request with the same messageId
WAIT_FOR_TWIN: Final = 10.0
#: a request working on a message renews its reservation this often...
HEARTBEAT: Final = 1.0
#: ...so one not renewed for this long was left by a request (or a process)
#: that died, and a retry takes the message over
STALE_RESERVATION: Final = 5.0

_decode_outcome = msgspec.json.Decoder(dict[str, Any]).decode


class Conflict(WebhookPluginError):
    """The request contradicts what is stored (another agent's conversation, say)."""


class Reservations:
    """The reservations of messages (by ``messageId``) in a chat store."""

    def __init__(
        self,
        store: ChatStore,
        blocking: Callable[..., Awaitable[Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._blocking = blocking
        self._clock = clock

    async def release(self, conversation_id: str, message_id: str) -> None:
        """Give up a reservation whose processing failed (a retry may take it)."""
        await self._blocking(self._store.release_outcome, conversation_id, message_id)

    async def keep(self, conversation_id: str, message_id: str) -> None:
        """Renew a reservation while its message is being worked on (a slow AI
        reply, say), so that only a dead request's reservation goes stale."""
        while True:
            await anyio.sleep(HEARTBEAT)
            try:
                await self._blocking(
                    functools.partial(
                        self._store.touch_outcome, conversation_id, message_id, now=self._clock()
                    )
                )
            except WebhookPluginError as exc:  # the next beat tries again
                log.warning("message.heartbeat_failed", error=str(exc))

    async def take(self, conversation_id: str, message_id: str) -> dict[str, Any] | None:
        """Reserve a message for this request: ``None`` when it is ours to process,
        else the answer stored for it (waiting, for up to :data:`WAIT_FOR_TWIN`
        seconds, for a request that works on it now).

        :raises Conflict: when that request is still at work after the wait.
        """
        deadline = time.monotonic() + WAIT_FOR_TWIN
        while True:
            now = self._clock()
            earlier = await self._blocking(
                functools.partial(
                    self._store.reserve_outcome,
                    conversation_id,
                    message_id,
                    now=now,
                    stale_before=now - STALE_RESERVATION,
                )
            )
            if earlier is None:
                return None
            if earlier:
                return _decode_outcome(earlier)
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"message {message_id!r} is still being processed by an earlier request;"
                    " retry later for its answer"
                )
            await anyio.sleep(0.05)
