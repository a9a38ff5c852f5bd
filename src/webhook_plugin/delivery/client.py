"""The HTTP client seam: one ``POST``, answered or failed, never a redirect followed.

:class:`HttpClient` is the interface the dispatcher and the user-info fetcher
use. :class:`Http11Client`, the default, speaks HTTP/1.1 (llhttp through
:mod:`.http11`) over anyio streams, so it runs on asyncio and trio; it keeps
connections alive in a plain list of idle connections per origin, and owns the
connect step, so that the network guard checks the very address it connects
to. See ``benchmarks/README.md`` for why it is not httpx's default transport.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Final, NamedTuple, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.abc
import idna
from anyio.streams.tls import TLSStream

from ..exceptions import ConnectError, RequestTimeout, TransportError
from .http11 import AnswerParser, build_request, request_target
from .netguard import NetworkGuard

__all__ = ["Http11Client", "HttpClient", "Response"]

_READ_SIZE: Final = 65536


class Response(NamedTuple):
    """An answer: status, headers (lower-cased names) and the body up to its cap."""

    status_code: int
    headers: dict[str, str]
    body: bytes
    #: True when the body was longer than the cap and was cut
    truncated: bool = False


class HttpClient(Protocol):
    async def post(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,
        max_body: int = 1024,
    ) -> Response:
        """POST ``body`` to ``url`` and return the answer.

        :param timeout: seconds for the whole exchange, connect included.
        :param max_body: bytes of the answer's body kept; the rest is not read.
        :raises TransportError: (or a subclass) when no complete answer came.
        """
        ...

    async def aclose(self) -> None: ...


class _Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class _Connection:
    __slots__ = ("idle_since", "stream", "used")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.idle_since = 0.0
        #: whether it already carried a request (a reused connection may have
        #: been closed by the server meanwhile)
        self.used = False


class Http11Client:
    """HTTP/1.1 keep-alive client on anyio streams, guarded at connect time.

    :param guard: vets every address before connecting.
    :param user_agent: sent on every request.
    :param max_idle_per_origin: idle connections kept per scheme, host and port.
    :param max_idle: idle connections kept in all (thousands of agents must not
        hold thousands of sockets open).
    :param keepalive_expiry: seconds an idle connection is kept; servers close
        theirs after a while, and a connection closed under us costs a retry.
    :param ssl_context: for ``https`` (default: the system's trust store).
    """

    def __init__(
        self,
        guard: NetworkGuard,
        *,
        user_agent: str,
        max_idle_per_origin: int = 64,
        max_idle: int = 512,
        keepalive_expiry: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._guard = guard
        self._user_agent = user_agent
        self._max_idle_per_origin = max_idle_per_origin
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: defaultdict[_Origin, list[_Connection]] = defaultdict(list)
        self._idle_count = 0
        self._last_sweep = time.monotonic()
        self._closed = False

    async def post(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,
        max_body: int = 1024,
    ) -> Response:
        origin, target, host = _parse(url)
        request = build_request(target, host, [("user-agent", self._user_agent), *headers], body)
        deadline = anyio.current_time() + timeout
        try:
            with anyio.fail_after(timeout):
                conn = await self._take_idle(origin)
                if conn is not None:
                    try:
                        return await self._exchange(origin, conn, request, max_body)
                    except _StaleConnection:
                        pass  # the server closed a kept-alive connection: use a new one
                conn = await self._connect(origin, deadline)
                try:
                    return await self._exchange(origin, conn, request, max_body)
                except _StaleConnection as exc:
                    raise ConnectError(f"connection to {origin.host!r} closed early") from exc
        except TimeoutError:
            raise RequestTimeout(f"no complete answer within {timeout:g} s") from None

    async def _take_idle(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        conn = idle.pop()  # the most recently used: the least likely to be closed
        self._idle_count -= 1
        if not idle:
            del self._idle[origin]
        if time.monotonic() - conn.idle_since > self._keepalive_expiry:
            await self._sweep(time.monotonic())  # this one and any other as old
            await _close(conn)
            return None
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        # built once: loading the system trust store costs milliseconds
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _connect(self, origin: _Origin, deadline: float) -> _Connection:
        addresses = await self._guard.resolve(origin.host, origin.port)
        last: Exception | None = None
        for index, address in enumerate(addresses):
            # each address left gets its share of the time left, so that one
            # black-holed address does not spend the whole attempt
            share = (deadline - anyio.current_time()) / (len(addresses) - index)
            stream: anyio.abc.ByteStream | None = None
            with anyio.move_on_after(share):
                try:
                    stream = await anyio.connect_tcp(address, origin.port)
                except OSError as exc:
                    last = exc
                    continue
            if stream is None:
                last = TimeoutError(f"no answer from {address} within {share:.2g} s")
                continue
            if origin.scheme == "https":
                try:
                    stream = await TLSStream.wrap(
                        stream,
                        hostname=origin.host,
                        ssl_context=self._tls_context(),
                        standard_compatible=False,
                    )
                except (OSError, ssl.SSLError, anyio.BrokenResourceError) as exc:
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
                    raise ConnectError(f"TLS with {origin.host!r} failed: {exc}") from exc
            return _Connection(stream)
        raise ConnectError(f"cannot connect to {origin.host!r} port {origin.port}: {last}")

    async def _exchange(
        self, origin: _Origin, conn: _Connection, request: bytes, max_body: int
    ) -> Response:
        reused, conn.used = conn.used, True
        received_any = False
        stream = conn.stream
        answer = AnswerParser(max_body)
        try:
            await stream.send(request)
            while not answer.done:
                try:
                    chunk = await stream.receive(_READ_SIZE)
                except anyio.EndOfStream:
                    chunk = b""
                if not chunk:
                    if not received_any:
                        raise _StaleConnection
                    answer.feed_eof()
                    break
                received_any = True
                answer.feed(chunk)
                if answer.truncated:
                    break  # more is coming than we keep: not worth reading the rest
        except _StaleConnection:
            await _close(conn)
            if reused:
                raise
            raise ConnectError(f"{origin.host!r} closed the connection without answering") from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            await _close(conn)
            if reused and not received_any:
                raise _StaleConnection from exc
            raise ConnectError(f"connection to {origin.host!r} lost: {exc!r}") from exc
        except BaseException:
            await _close(conn)
            raise
        finally:
            answer.close()
        if answer.reusable and not self._closed:
            await self._keep(origin, conn)
        else:
            await _close(conn)
        return Response(answer.status, answer.headers, answer.body, answer.truncated)

    async def _keep(self, origin: _Origin, conn: _Connection) -> None:
        now = time.monotonic()
        if now - self._last_sweep > self._keepalive_expiry:
            await self._sweep(now)
            if self._closed:  # closed while we swept
                await _close(conn)
                return
        idle = self._idle[origin]
        if len(idle) < self._max_idle_per_origin and self._idle_count < self._max_idle:
            conn.idle_since = now
            idle.append(conn)
            self._idle_count += 1
            return
        await _close(conn)

    async def _sweep(self, now: float) -> None:
        """Close connections idle for longer than the keep-alive expiry."""
        # Take every expired connection out of the pool before the first await:
        # other tasks take and return connections while these close.
        self._last_sweep = now
        expired: list[_Connection] = []
        for origin, conns in list(self._idle.items()):
            fresh = [c for c in conns if now - c.idle_since <= self._keepalive_expiry]
            if len(fresh) == len(conns):
                continue
            expired += [c for c in conns if now - c.idle_since > self._keepalive_expiry]
            if fresh:
                self._idle[origin] = fresh
            else:
                del self._idle[origin]
        self._idle_count -= len(expired)
        for conn in expired:
            await _close(conn)

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, defaultdict(list)
        self._idle_count = 0
        for conns in idle.values():
            for conn in conns:
                await _close(conn)


class _StaleConnection(Exception):
    """A kept-alive connection turned out closed before any answer byte."""


async def _close(conn: _Connection) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await conn.stream.aclose()
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


# A handful of endpoint URLs are posted to over and over: splitting, encoding
# and checking the same string for each request is work done once here.
@functools.lru_cache(maxsize=1024)
def _parse(url: str) -> tuple[_Origin, bytes, bytes]:
    """The origin, the request target and the ``host`` header of ``url``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TransportError(f"invalid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransportError("only absolute http:// and https:// URLs can be called")
    host = parts.hostname
    if not host.isascii():
        try:  # IDNA 2008, with the UTS 46 mapping browsers apply
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise TransportError("invalid URL: the host name is not a valid IDNA name") from None
    default = 443 if parts.scheme == "https" else 80
    origin = _Origin(parts.scheme, host, port or default)
    try:
        target = request_target(parts.path, parts.query)
    except UnicodeEncodeError:  # a lone surrogate, from a row written by hand
        raise TransportError("invalid URL: its path or query is not valid Unicode") from None
    return origin, target, _host_header(origin)


def _host_header(origin: _Origin) -> bytes:
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    if origin.port != (443 if origin.scheme == "https" else 80):
        host = f"{host}:{origin.port}"
    return host.encode("ascii")
