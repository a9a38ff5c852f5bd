"""Fetching external user information for the Inbox.

``POST`` to the agent's user-info URL with a small JSON body (no personal data
in the URL), through the same guarded HTTP client as deliveries. The answer
must be a JSON object of bounded size. Answers are cached per agent and
contact; concurrent renders of the same contact share one request
(single-flight); the whole thing is time-boxed. It never raises: the Inbox
renders without user info and :class:`~webhook_plugin.models.UserInfo` says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import anyio
import msgspec
import structlog

from .delivery.client import HttpClient
from .exceptions import BlockedAddress, RequestTimeout, TransportError
from .models import Agent, Conversation, UserInfo
from .payloads import contact_to_wire
from .settings import WebhookSettings, parse_header

__all__ = ["UserInfoFetcher"]

log = structlog.get_logger("webhook_plugin.userinfo")

#: how long a failed lookup is remembered, so a broken endpoint is not hammered
FAILURE_TTL: Final = 5.0
#: the deepest nesting of lists and objects accepted in an answer
MAX_DEPTH: Final = 32


class _Request(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    agent_id: str
    conversation_id: str
    channel: str
    contact: dict[str, str]


_encode: Final = msgspec.json.Encoder().encode
_decode_object: Final = msgspec.json.Decoder(dict[str, Any]).decode


class _Flight:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result = UserInfo(status="error", error="the lookup was cancelled")


class UserInfoFetcher:
    """Looks up contacts at agents' user-info endpoints.

    :param client: the guarded HTTP client.
    :param timeout: seconds before the Inbox gives up (status ``timeout``).
    :param ttl: seconds an answer is cached.
    :param max_bytes: the largest answer accepted.
    """

    def __init__(
        self,
        client: HttpClient,
        *,
        timeout: float = 3.0,
        ttl: float = 300.0,
        max_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._clock = clock
        self._cache: dict[bytes, tuple[float, UserInfo]] = {}
        self._flights: dict[bytes, _Flight] = {}

    async def fetch(
        self, agent: Agent, conversation: Conversation, settings: WebhookSettings
    ) -> UserInfo:
        """The contact's user info; never raises."""
        url = settings.user_info_url
        if not url:
            return UserInfo(status="not_configured")
        c = conversation.contact
        body = _encode(
            _Request(
                agent_id=agent.id,
                conversation_id=conversation.id,
                channel=conversation.channel,
                contact=contact_to_wire(c),
            )
        )
        key = b"\0".join(
            (agent.id.encode(), url.encode(), _encode((c.id, c.name, c.email, c.phone_number)))
        )
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()
            return flight.result
        flight = self._flights[key] = _Flight()
        try:
            flight.result = await self._request(agent.id, url, settings.user_info_header, body)
            ttl = self._ttl if flight.result.status == "ok" else min(self._ttl, FAILURE_TTL)
            self._cache[key] = (self._clock() + ttl, flight.result)
            if len(self._cache) > 10_000:
                self._evict()
        finally:
            del self._flights[key]
            flight.done.set()
        return flight.result

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]
        while len(self._cache) > 10_000:
            self._cache.pop(next(iter(self._cache)))

    async def _request(self, agent_id: str, url: str, header: str | None, body: bytes) -> UserInfo:
        headers = [("content-type", "application/json"), ("accept", "application/json")]
        if header:
            headers.append(parse_header(header, "userInfoHeader"))
        started = time.perf_counter()
        try:
            with anyio.fail_after(self._timeout):
                response = await self._client.post(
                    url, headers, body, timeout=self._timeout, max_body=self._max_bytes
                )
        except (TimeoutError, RequestTimeout):
            return self._failed(agent_id, "timeout", f"no answer within {self._timeout:g} s")
        except BlockedAddress as exc:
            return self._failed(agent_id, "error", f"refused by the network guard: {exc}")
        except TransportError as exc:
            return self._failed(agent_id, "error", f"{exc.code}: {exc}")
        except Exception as exc:  # a bug of ours must not break the Inbox either
            log.exception("user_info.internal_error", agent_id=agent_id)
            return UserInfo(status="error", error=f"internal_error: {type(exc).__name__}")
        if not 200 <= response.status_code < 300:
            return self._failed(
                agent_id, "error", f"the endpoint answered HTTP {response.status_code}"
            )
        if response.truncated:
            return self._failed(
                agent_id, "error", f"the answer is larger than {self._max_bytes} bytes"
            )
        try:
            data = _decode_object(response.body)
        except msgspec.ValidationError:
            return self._failed(agent_id, "error", "the answer is JSON but not an object")
        except msgspec.DecodeError:
            return self._failed(agent_id, "error", "the answer is not valid JSON")
        except RecursionError:
            data = None
        if data is None or _depth(data) > MAX_DEPTH:
            return self._failed(
                agent_id, "error", f"the answer is nested more than {MAX_DEPTH} levels deep"
            )
        log.debug(
            "user_info.ok",
            agent_id=agent_id,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return UserInfo(status="ok", data=data)

    @staticmethod
    def _failed(agent_id: str, status: str, error: str) -> UserInfo:
        log.warning("user_info.failed", agent_id=agent_id, status=status, error=error)
        return UserInfo(status=status, error=error)  # type: ignore[arg-type]


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (without recursion)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in item)
    return deepest
