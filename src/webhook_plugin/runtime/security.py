"""Pure ASGI middleware that guards the HTTP API: a bearer token, body limits and
a time limit on reading the body."""

from __future__ import annotations

import hmac

import anyio
import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "BodyTimeoutMiddleware", "TokenAuthMiddleware", "error_response"]

_encode = msgspec.json.Encoder().encode


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


class TokenAuthMiddleware:
    """Every HTTP request under ``prefix`` (the API and the metrics) needs
    ``Authorization: Bearer <token>``.

    The comparison takes constant time; the token never appears in an answer.
    """

    def __init__(
        self, app: ASGIApp, token: str, prefix: str | tuple[str, ...] = ("/v1", "/metrics")
    ) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self._prefix):
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self._expected):
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
