"""Pure ASGI middleware that guards the HTTP API: what a browser may reach, a
bearer token, body limits and a time limit on reading the body."""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

import anyio
import msgspec
import structlog
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "LOOPBACK_HOSTS",
    "BodyLimitMiddleware",
    "BodyTimeoutMiddleware",
    "BrowserGuard",
    "Guesses",
    "TokenAuthMiddleware",
    "error_response",
]

#: the ``Host`` names every server answers: loopback names and addresses
#: (``*.localhost`` resolves to loopback in every current browser, RFC 6761)
LOOPBACK_HOSTS: Final = ("localhost", "*.localhost", "127.0.0.1", "[::1]")
_STATE_CHANGING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}

_encode = msgspec.json.Encoder().encode

log = structlog.get_logger("webhook_plugin.security")


class Guesses:
    """Wrong API tokens and sign-ins, counted per client address: a token bucket
    each. A client may get the token wrong ``burst`` times in a row, then once
    every ``per`` seconds; past that, every attempt it makes to authenticate,
    right or wrong, is answered ``429`` with ``Retry-After`` until its bucket
    has refilled (a right answer must not tell a guesser it guessed).

    A small bucket rather than a rate-limiting library: one dict, no storage
    to run, the same on asyncio and trio. It is per process: N servers give a
    guesser N times the rate, still far too little to guess a 16-character
    token. ``max_clients`` bounds the memory (the fullest buckets are the first
    forgotten).
    """

    def __init__(
        self,
        *,
        burst: int = 10,
        per: float = 6.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per = per
        self.max_clients = max_clients
        self._clock = clock
        #: client -> (tokens left, when counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def _left(self, client: str) -> float:
        tokens, at = self._buckets.get(client, (self.burst, 0.0))
        return min(self.burst, tokens + (self._clock() - at) / self.per)

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or ``None`` when it may now."""
        if client not in self._buckets:
            return None
        left = self._left(client)
        return None if left >= 1 else max(1, math.ceil((1 - left) * self.per))

    def failed(self, client: str) -> None:
        """``client`` got the token wrong: one try less."""
        left = self._left(client) - 1
        self._buckets.pop(client, None)  # the most recent last, for the eviction below
        self._buckets[client] = (left, self._clock())
        if len(self._buckets) > self.max_clients:
            oldest = next(iter(self._buckets))
            del self._buckets[oldest]


def client_of(scope: Scope) -> str:
    """The client's address (the proxy's, unless uvicorn trusts its headers)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def refused(client: str, path: str, reason: str) -> None:
    """One structured line per refused attempt to authenticate, which a fail2ban
    rule can match (README, "Guessing")."""
    log.warning("auth.refused", client=client, path=path, reason=reason)


async def error_response(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = _encode({"error": {"code": code, "message": message}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BrowserGuard:
    """What a browser may reach, token or not (pure ASGI, ``CONTRACT.md`` section 4).

    - ``Host`` must be a loopback name or address or one of ``allowed_hosts``,
      else ``400`` from Starlette's ``TrustedHostMiddleware``: a page on
      ``evil.example`` whose name was rebound to 127.0.0.1 sends ``Host:
      evil.example``, and is answered nothing.
    - A state-changing request (``POST``, ``PUT``, ``PATCH``, ``DELETE``) whose
      ``Origin`` is another origin (another host, or the same host on another
      port), or whose ``Sec-Fetch-Site`` is ``cross-site``, is ``403``: a page
      on another site cannot drive the API or the console through the visitor's
      browser, with or without ``mode: "no-cors"``.
    - A ``/v1`` request body must be ``application/json`` (``415``): a browser
      must then ask first (a CORS preflight), which we never allow. Clients that
      are not browsers send no ``Origin`` and are not concerned.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] = ()) -> None:
        self.app = app
        self._allowed = tuple(h.lower() for h in allowed_hosts)
        self._hosts = TrustedHostMiddleware(
            self._same_origin, allowed_hosts=[*LOOPBACK_HOSTS, *allowed_hosts], www_redirect=False
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._hosts(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _same_origin(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in _STATE_CHANGING:
            origin = site = ctype = host = None
            body = False
            for name, value in scope["headers"]:
                if name == b"origin":
                    origin = value.decode("latin-1")
                elif name == b"sec-fetch-site":
                    site = value
                elif name == b"content-type":
                    ctype = value
                elif name == b"host":
                    host = value.decode("latin-1")
                elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                    body = True
            foreign = origin is not None and not _same(origin, host, self._allowed)
            if site == b"cross-site" or foreign:
                await error_response(
                    send,
                    403,
                    "cross_origin",
                    "a request that changes something must come from this server's own"
                    " pages or from a client that is not a browser",
                )
                return
            if body and scope["path"].startswith("/v1") and not _json(ctype):
                await error_response(
                    send,
                    415,
                    "unsupported_media_type",
                    "a /v1 request body must be sent with 'Content-Type: application/json'",
                )
                return
        await self.app(scope, receive, send)


def _json(ctype: bytes | None) -> bool:
    return ctype is not None and ctype.partition(b";")[0].strip().lower() == b"application/json"


def _same(origin: str, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether ``origin`` (an ``Origin`` header) is this server's: the origin the
    request was sent to (its ``Host``), or one on a name listed in
    ``allowed_hosts`` (a proxy in front may rewrite ``Host``).

    The same host name, and the same port: a ``Host`` without one is the
    default port, and the ``Origin``'s port must then be its own scheme's
    default (behind a TLS proxy the scheme seen here may differ from the
    browser's), so that another server on the same name (``localhost:3000``)
    is another origin."""
    try:
        given, sent_to = urlsplit(origin), urlsplit(f"//{host}")
        port, expected = given.port, sent_to.port
    except ValueError:
        return False
    if given.scheme not in _DEFAULT_PORTS or not given.hostname:
        return False  # "null" (a sandboxed page, a file), or nonsense
    name = given.hostname  # (lowercased by urlsplit)
    if any(name == a or (a.startswith("*.") and name.endswith(a[1:])) for a in allowed):
        return True
    if name != sent_to.hostname:
        return False
    if expected is None:
        return port is None or port == _DEFAULT_PORTS[given.scheme]
    return (port or _DEFAULT_PORTS[given.scheme]) == expected


class TokenAuthMiddleware:
    """Every HTTP request under ``prefix`` (the API and the metrics) needs
    ``Authorization: Bearer <token>``.

    The comparison takes constant time; the token never appears in an answer.
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        prefix: str | tuple[str, ...] = ("/v1", "/metrics"),
        guesses: Guesses | None = None,
    ) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._prefix = prefix
        self.guesses = guesses or Guesses()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self._prefix):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        client = client_of(scope)
        wait = self.guesses.retry_after(client)
        if wait is not None:
            refused(client, scope["path"], "too_many_wrong_tokens")
            await error_response(
                send,
                429,
                "too_many_attempts",
                f"too many wrong API tokens from this address: try again in {wait} s",
                [(b"retry-after", str(wait).encode())],
            )
            return
        if not hmac.compare_digest(given, self._expected):
            if given:
                self.guesses.failed(client)
            refused(client, scope["path"], "wrong_token" if given else "no_token")
            await error_response(
                send,
                401,
                "unauthorized",
                "missing or wrong API token: send 'Authorization: Bearer <api_token>'",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with ``413``, declared or streamed.

    The body is read here (it is small by definition) and replayed to the app,
    so the app never sees a partial body and a refusal is always a clean 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = 1024 * 1024) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(send, 400, "invalid_body", "bad Content-Length header")
                    return
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        await error_response(
            send, 413, "body_too_large", f"request body is larger than {self.max_bytes} bytes"
        )


class BodyTimeoutMiddleware:
    """The whole request body must arrive within ``timeout`` seconds of the
    request's start (its head is complete by then), or the answer is ``408``
    with ``Connection: close``.

    Only reading the body is timed: once the last chunk (or a disconnect) has
    arrived, ``receive`` passes through untouched, so a long response that
    listens for the client going away is not cut short. After a timeout the
    app reads ``http.disconnect`` and whatever it sends is dropped. If the app
    had already started its answer, no ``408`` is possible: it only reads the
    disconnect. Runs on asyncio and trio (anyio).
    """

    def __init__(self, app: ASGIApp, timeout: float = 30.0) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.timeout
        body_done = False
        timed_out = False
        started = False
        answered = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        async def guarded_receive() -> Message:
            nonlocal body_done, timed_out, answered
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            with anyio.move_on_after(deadline - anyio.current_time()) as cancel_scope:
                message = await receive()
            if cancel_scope.cancelled_caught:
                timed_out = True
                if not started:
                    answered = True
                    await error_response(
                        send,
                        408,
                        "request_timeout",
                        f"the request body did not arrive within {self.timeout:g} seconds",
                        [(b"connection", b"close")],
                    )
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not answered:
                raise
            # the app failed to read a body that never came (Starlette raises
            # ClientDisconnect): expected, and already answered with 408
