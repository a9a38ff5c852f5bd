"""The HTTP server of ``webhook-plugin serve``: uvicorn, configured for the open internet.

uvicorn's httptools protocol is fast but trusts its clients: a connection that
sends nothing, or half a request head, stays open for ever (its keep-alive
timer only runs *between* requests), nothing caps the number of open
connections, and once the process runs out of file descriptors asyncio logs
``socket.accept() out of system resource`` (with a traceback) up to ``backlog``
times per second. This module adds, in a subclass of uvicorn's
:class:`HttpToolsProtocol` and a :class:`uvicorn.Server`:

- a **head timeout**: a request head must be complete ``head_timeout`` seconds
  after the connection opens, or after its first byte on a kept-alive
  connection; otherwise ``408`` (if part of a head arrived) and close;
- a **head size cap** (``max_head_bytes``): ``431`` and close beyond it;
- a **connection cap** (``max_connections``, by default half the file
  descriptor limit, at most 4,096), checked in ``accept()`` itself
  (:class:`GatedSocket`, :class:`ConnectionGate`): at the cap, a new
  connection takes the place of the one waiting longest for its first request
  head; if none is waiting, it gets a minimal ``503`` with ``Connection:
  close`` and is closed at once, before it is read. The process sheds load
  instead of running out of descriptors, and new clients are still served
  during a flood of idle connections;
- a **body timeout** (:class:`~webhook_plugin.runtime.security.BodyTimeoutMiddleware`);
- uvicorn's own keep-alive timeout and ``limit_concurrency`` (requests in
  flight, including those whose client has gone: twice the connection cap);
- **log lines once per interval**, not per try: ``accept()`` failures
  (``server.accept_failed``), shed connections (``server.connections_shed``)
  and uvicorn's per-request warnings ("Invalid HTTP request received.") each
  log at most one line per ``log_interval`` with a count of the others;
- the soft ``RLIMIT_NOFILE`` raised to the hard limit at start-up.

Idle or slow connections are closed silently otherwise: on the internet they
are routine and a line per connection is what an attacker would like.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import msgspec
import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .security import BodyTimeoutMiddleware

__all__ = [
    "ConnectionGate",
    "GatedSocket",
    "LimitedHttpToolsProtocol",
    "Server",
    "ServerConfig",
    "ServerLimits",
    "default_max_connections",
    "raise_fd_limit",
    "serve",
]

log = structlog.get_logger("webhook_plugin.server")

_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class ServerLimits:
    """The limits one server applies to its clients (seconds, counts, bytes).

    ``max_connections`` and ``limit_concurrency`` of ``None`` are derived from
    the file descriptor limit by :meth:`resolved`.
    """

    head_timeout: float = 10.0
    body_timeout: float = 30.0
    timeout_keep_alive: float = 5.0
    max_connections: int | None = None
    limit_concurrency: int | None = None
    max_head_bytes: int = 64 * 1024
    log_interval: float = 10.0

    def resolved(self, fd_limit: int | None = None) -> ServerLimits:
        max_connections = self.max_connections
        if max_connections is None:
            max_connections = default_max_connections(fd_limit)
        return replace(
            self,
            max_connections=max_connections,
            limit_concurrency=self.limit_concurrency or 2 * max_connections,
        )


def _fd_limit() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def default_max_connections(fd_limit: int | None = None) -> int:
    """Half the file descriptor limit (the rest is for delivery, whose client
    keeps up to 512 idle connections, and the database), between 64 and 4,096."""
    fd_limit = fd_limit if fd_limit is not None else _fd_limit()
    if fd_limit is None:
        return 1024
    return max(64, min(4096, fd_limit // 2))


def raise_fd_limit(target: int = 65536) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` towards the hard limit (at most ``target``
    when the hard limit is unlimited); the limits afterwards as ``(soft, hard)``."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):  # e.g. macOS refuses values above OPEN_MAX
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class Throttle:
    """Report an event at most once per ``interval`` seconds.

    The first event is reported at once; those in the following interval are
    counted and reported together when it ends (a timer on ``loop``, when
    given), so no count is lost and a flood costs one line per interval.
    ``emit`` receives the number of events the report stands for.
    """

    def __init__(self, interval: float, emit: Callable[[int], None]) -> None:
        self.interval = interval
        self.emit = emit
        self.pending = 0
        self.next_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def hit(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.pending += 1
        now = time.monotonic()
        if now >= self.next_at:
            self.flush()
        elif self._timer is None and loop is not None:
            self._timer = loop.call_later(self.next_at - now, self.flush)

    def flush(self) -> None:
        self._timer = None
        if self.pending:
            count, self.pending = self.pending, 0
            self.next_at = time.monotonic() + self.interval
            self.emit(count)


class ThrottleFilter(logging.Filter):
    """A logging filter letting through one WARNING (or lower) record per message
    template per interval; the next one says how many were dropped. Errors pass."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._state: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        key = str(record.msg)
        now = time.monotonic()
        next_at, dropped = self._state.get(key, (0.0, 0))
        if now < next_at:
            self._state[key] = (next_at, dropped + 1)
            return False
        if len(self._state) > 1000:  # templates are few; never grow without bound
            self._state.clear()
        self._state[key] = (now + self.interval, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like this in the last {self.interval:g} s)"
        return True


def _response(status: bytes, code: str, message: str, extra: bytes = b"") -> bytes:
    body = msgspec.json.encode({"error": {"code": code, "message": message}})
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"connection: close\r\n\r\n"
        + body
    )


RESPONSE_503 = _response(
    b"503 Service Unavailable",
    "overloaded",
    "too many open connections: try again shortly",
    b"retry-after: 1\r\n",
)
RESPONSE_408 = _response(
    b"408 Request Timeout", "request_timeout", "the request head did not arrive in time"
)
RESPONSE_431 = _response(
    b"431 Request Header Fields Too Large", "head_too_large", "the request head is too large"
)


class ServerConfig(uvicorn.Config):
    """``uvicorn.Config`` with our :class:`ServerLimits` and their log throttles."""

    def __init__(self, app: Any, *, limits: ServerLimits | None = None, **kwargs: Any) -> None:
        limits = (limits or ServerLimits()).resolved()
        kwargs.setdefault("http", LimitedHttpToolsProtocol)
        kwargs.setdefault("timeout_keep_alive", limits.timeout_keep_alive)
        kwargs.setdefault("limit_concurrency", limits.limit_concurrency)
        super().__init__(app, **kwargs)
        self.limits = limits
        self.gate: ConnectionGate | None = None  # set by Server.startup
        self.shed_throttle = Throttle(
            limits.log_interval,
            lambda count: log.warning(
                "server.connections_shed",
                count=count,
                max_connections=limits.max_connections,
                hint="answered 503 and closed; raise --max-connections if this is real traffic",
            ),
        )
        self.evict_throttle = Throttle(
            limits.log_interval,
            lambda count: log.warning(
                "server.waiting_connections_closed",
                count=count,
                max_connections=limits.max_connections,
                hint="at the cap: closed those waiting longest for a request head, for new ones",
            ),
        )


_DEFAULT_CONFIG_STATE: dict[str, Any] = {}


def _limits_of(config: uvicorn.Config) -> tuple[ServerLimits, Throttle]:
    if isinstance(config, ServerConfig):
        return config.limits, config.shed_throttle
    # a plain uvicorn.Config(http=LimitedHttpToolsProtocol): default limits
    if not _DEFAULT_CONFIG_STATE:
        limits = ServerLimits().resolved()
        _DEFAULT_CONFIG_STATE["limits"] = limits
        _DEFAULT_CONFIG_STATE["throttle"] = Throttle(
            limits.log_interval,
            lambda count: log.warning("server.connections_shed", count=count),
        )
    return _DEFAULT_CONFIG_STATE["limits"], _DEFAULT_CONFIG_STATE["throttle"]


class ConnectionGate:
    """Counts a server's connections from ``accept()`` on, to shed those over the cap.

    asyncio accepts up to ``backlog`` connections in one go and builds their
    protocols a tick or two later, so a cap checked in ``connection_made``
    alone lets a burst through (2,000 connections at once ran a server with
    ``ulimit -n 1024`` out of descriptors). :class:`GatedSocket` asks
    :meth:`admit` in ``accept()`` itself; a connection counts from there until
    its protocol's ``connection_lost``.

    At the cap, a new connection first takes the place of the one that has
    waited longest without sending a complete request head (it is closed,
    with ``408`` if part of a head came): in a flood of idle and half-sent
    connections, those are the attacker's, and a real client connecting
    meanwhile is served instead of refused. Connections that have served a
    request (kept alive between requests) are never closed for room; when
    none is waiting, the new connection is shed (``503``).
    """

    def __init__(
        self,
        max_connections: int,
        connections: set[Any],
        throttle: Throttle,
        evict_throttle: Throttle | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.connections = connections  # uvicorn's: the protocols after connection_made
        self.throttle = throttle
        self.evict_throttle = evict_throttle
        self.accepted = 0  # accepted, protocol not built yet
        self.building: weakref.WeakSet[Any] = weakref.WeakSet()  # built, not connected yet
        self.waiting: dict[Any, None] = {}  # no request head yet; oldest first
        self.evicting = 0  # closed for room, connection_lost still to come
        # a closed transport frees its descriptor a turn of the loop later: at most
        # this many in flight, or the descriptors would overshoot the cap
        self.max_evicting = max(8, max_connections // 16)

    def _count(self) -> int:
        return self.accepted + len(self.building) + len(self.connections) - self.evicting

    def must_wait(self) -> bool:
        """Full, with enough connections closing: accept no more this turn."""
        return self.evicting >= self.max_evicting and self._count() >= self.max_connections

    def admit(self) -> bool:
        if self._count() >= self.max_connections and not self._evict_one():
            return False
        self.accepted += 1
        return True

    def _evict_one(self) -> bool:
        while self.waiting:
            victim = next(iter(self.waiting))
            del self.waiting[victim]
            if victim.evict():
                self.evicting += 1
                if self.evict_throttle is not None:
                    self.evict_throttle.hit(_running_loop())
                return True
        return False

    def served(self, protocol: Any) -> None:
        self.waiting.pop(protocol, None)

    def gone(self, protocol: Any, evicted: bool) -> None:
        self.waiting.pop(protocol, None)
        if evicted:
            self.evicting = max(0, self.evicting - 1)

    def built(self, protocol: Any) -> None:
        self.accepted = max(0, self.accepted - 1)
        self.building.add(protocol)

    def connected(self, protocol: Any) -> None:
        self.building.discard(protocol)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class GatedSocket(socket.socket):
    """A listening socket whose ``accept()`` sheds connections over the gate's cap:
    a minimal ``503`` written straight to the new socket, which is closed at
    once. asyncio's accept loop only ever sees the admitted ones."""

    gate: ConnectionGate
    MAX_SHED_PER_CALL = 512

    @classmethod
    def wrap(cls, sock: socket.socket, gate: ConnectionGate, *, dup: bool) -> GatedSocket:
        fileno = os.dup(sock.fileno()) if dup else sock.detach()
        # family, type and protocol read from the socket itself: with the protocol
        # left at 0 (as uvicorn binds it), asyncio would not set TCP_NODELAY on
        # the accepted connections, and every answer would wait for a delayed ACK
        gated = cls(fileno=fileno)
        gated.gate = gate
        return gated

    _failed = False

    def accept(self) -> tuple[socket.socket, Any]:
        if self._failed:
            # asyncio goes on calling accept() up to `backlog` times after an
            # EMFILE, reporting each (and arming a retry timer for each): end
            # its batch after the first failure. It retries a second later.
            self._failed = False
            raise BlockingIOError(errno.EAGAIN, "accept() failed: retry later")
        for _ in range(self.MAX_SHED_PER_CALL):
            if self.gate.must_wait():  # left in the listen queue until the next turn
                raise BlockingIOError(errno.EAGAIN, "connections are closing: next turn")
            try:
                conn, address = super().accept()  # BlockingIOError when none is waiting
            except OSError as exc:
                if exc.errno in _ACCEPT_ERRNOS:
                    self._failed = True
                raise
            if self.gate.admit():
                return conn, address
            try:
                conn.setblocking(False)
                conn.send(RESPONSE_503)
            except OSError:
                pass
            finally:
                conn.close()
            self.gate.throttle.hit(_running_loop())
        raise BlockingIOError(errno.EAGAIN, "shed enough for one turn of the loop")


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head timeout, a head size cap and a
    connection cap (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        limits, self._shed_throttle = _limits_of(config)
        self._head_timeout = limits.head_timeout
        self._max_head_bytes = limits.max_head_bytes
        self._max_connections = limits.max_connections or 1024
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False  # the parser has seen the start of a request
        self._in_body = False  # between a request's head and the end of its body
        self._head_bytes = 0
        self._shed = False
        self._evicted = False
        self._gate: ConnectionGate | None = getattr(config, "gate", None)
        if self._gate is not None:
            self._gate.built(self)

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self._gate is not None:
            self._gate.connected(self)  # admitted in accept(), the cap checked there
        elif len(self.connections) >= self._max_connections:
            self._shed = True
            self.transport = transport
            transport.write(RESPONSE_503)
            transport.close()
            self._shed_throttle.hit(self.loop)
            return
        super().connection_made(transport)
        self._arm_head_timer()
        if self._gate is not None:
            self._gate.waiting[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        if self._gate is not None:
            self._gate.gone(self, self._evicted)
        super().connection_lost(exc)

    def evict(self) -> bool:
        """Close this connection to make room (it has not sent a request head yet)."""
        if self._shed or self.transport is None or self.transport.is_closing():
            return False
        self._evicted = True
        if self._head_started:
            self._reject(RESPONSE_408)
        else:
            self._disarm_head_timer()
            self.transport.close()
        return True

    def data_received(self, data: bytes) -> None:
        if self._shed:
            return
        idle = self.cycle is None or self.cycle.response_complete
        if self._head_timer is None and idle and not self._in_body:
            # bytes while no request is in progress: a new head begins
            self._arm_head_timer()
        if self._head_timer is not None and not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._head_timer is not None
            and not self._in_body
            and self._head_bytes > self._max_head_bytes
            and not self.transport.is_closing()
        ):
            self._reject(RESPONSE_431)

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        if self._head_timer is None:  # a pipelined request
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        self._head_started = False
        self._in_body = True
        if self._gate is not None:
            self._gate.served(self)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        if (self.cycle is None or self.cycle.response_complete) and self._head_timer is not None:
            # the rest of a body that came after the answer, now drained: the
            # next head has its full time
            self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_body and not self.transport.is_closing():
            # answered before the body was read (401, 413): the rest of the body
            # must arrive within the head timeout too, or a client could go on
            # trickling it for ever (each byte resets uvicorn's keep-alive timer)
            self._arm_head_timer()

    # -- the head timer ----------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_started:
            self._reject(RESPONSE_408)
        else:  # nothing but perhaps blank lines: a silent close, like a keep-alive timeout
            self.transport.close()

    def _reject(self, response: bytes) -> None:
        self._disarm_head_timer()
        if self.cycle is None or self.cycle.response_complete:  # never inside another answer
            self.transport.write(response)
        self.transport.close()


class Server(uvicorn.Server):
    """``uvicorn.Server`` that sheds connections over the cap in ``accept()`` and
    throttles ``accept()`` failures on its event loop (with a :class:`ServerConfig`)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        if isinstance(config, ServerConfig):
            install_accept_error_handler(asyncio.get_running_loop(), config.limits.log_interval)
            gate = ConnectionGate(
                config.limits.max_connections or default_max_connections(),
                self.server_state.connections,
                config.shed_throttle,
                config.evict_throttle,
            )
            if sockets is not None:
                sockets = [GatedSocket.wrap(s, gate, dup=True) for s in sockets]
                config.gate = gate
            elif config.uds is None and config.fd is None:
                own = config.bind_socket()  # exits on failure, like uvicorn
                own.set_inheritable(False)
                sockets = [GatedSocket.wrap(own, gate, dup=False)]
                config.gate = gate
            # else: uvicorn binds the socket; the cap is checked in connection_made
        await super().startup(sockets=sockets)


def install_accept_error_handler(loop: asyncio.AbstractEventLoop, interval: float = 10.0) -> None:
    """Log ``socket.accept() out of system resource`` once per ``interval``.

    asyncio reports every failed ``accept()`` to the loop's exception handler,
    with a traceback, up to ``backlog`` times in one go, and retries a second
    later: under ``EMFILE`` that is thousands of lines a second. Other
    exceptions go to the previous handler.
    """
    previous = loop.get_exception_handler()
    last_error: list[str] = [""]
    throttle = Throttle(
        interval,
        lambda count: log.error(
            "server.accept_failed",
            error=last_error[0],
            count=count,
            hint="out of file descriptors or memory: lower --max-connections or raise `ulimit -n`",
        ),
    )

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (
            isinstance(exc, OSError)
            and exc.errno in _ACCEPT_ERRNOS
            and "accept" in str(context.get("message", ""))
        ):
            last_error[0] = f"[{errno.errorcode.get(exc.errno, exc.errno)}] {exc.strerror}"
            throttle.hit(loop)
            return
        callback = getattr(context.get("handle"), "_callback", None)
        if isinstance(exc, ValueError) and getattr(callback, "__name__", "") == "_start_serving":
            return  # asyncio's accept retry timer firing after the server closed
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServerLimits | None = None,
    **uvicorn_options: Any,
) -> bool:
    """Serve ``app`` until SIGINT or SIGTERM; ``False`` if it could not start.

    Raises the file descriptor limit first, wraps ``app`` in the body timeout
    and runs our :class:`Server` with :class:`LimitedHttpToolsProtocol`.
    """
    raise_fd_limit()
    limits = (limits or ServerLimits()).resolved()
    if limits.body_timeout:
        app = BodyTimeoutMiddleware(app, limits.body_timeout)
    options: dict[str, Any] = {
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        **uvicorn_options,
    }
    config = ServerConfig(app, host=host, port=port, limits=limits, **options)
    logging.getLogger("uvicorn.error").addFilter(ThrottleFilter(limits.log_interval))
    log.info(
        "server.limits",
        head_timeout=limits.head_timeout,
        body_timeout=limits.body_timeout,
        timeout_keep_alive=limits.timeout_keep_alive,
        max_connections=limits.max_connections,
        limit_concurrency=limits.limit_concurrency,
        fd_limit=_fd_limit(),
    )
    server = Server(config)
    server.run()
    return server.started
