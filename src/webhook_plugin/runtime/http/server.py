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
- a **body timeout**: the whole body must arrive within ``body_timeout``
  seconds of the head; otherwise ``408`` (unless the answer has begun) and
  close. A timer per request, where
  :class:`~webhook_plugin.runtime.http.security.BodyTimeoutMiddleware` (the same
  rule for other servers) costs a cancel scope per ``receive``;
- uvicorn's own keep-alive timeout and ``limit_concurrency`` (requests in
  flight, including those whose client has gone: twice the connection cap);
- **log lines once per interval**, not per try: ``accept()`` failures
  (``server.accept_failed``), shed connections (``server.connections_shed``)
  and uvicorn's per-request warnings ("Invalid HTTP request received.") each
  log at most one line per ``log_interval`` with a count of the others;
- the soft ``RLIMIT_NOFILE`` raised to the hard limit at start-up.

Idle or slow connections are closed silently otherwise: on the internet they
are routine and a line per connection is what an attacker would like.

asyncio on purpose: uvicorn runs on asyncio only, and only the CLI's
``serve`` imports this module. The app it serves, the plugin and the delivery
engine stay on anyio and run on trio too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .gate import ConnectionGate, GatedSocket
from .limits import (
    ACCEPT_ERRNOS,
    RESPONSE_408,
    RESPONSE_431,
    RESPONSE_503,
    ServerLimits,
    Throttle,
    ThrottleFilter,
    default_max_connections,
    open_file_limit,
    raise_fd_limit,
    response_408_body,
)

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
        self._body_timeout = limits.body_timeout
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_cycle: Any = None  # the request whose body it times
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
        self._disarm_body_timer()
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

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # a request's body is timed from when it is served: a pipelined one waits
        # unread (uvicorn pauses reading) while the one before it is answered
        super()._start_asgi_task(cycle, app)
        if self._body_timeout and cycle.more_body:
            self._disarm_body_timer()
            self._body_cycle = cycle
            self._body_timer = self.loop.call_later(self._body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._body_cycle is self.cycle:
            self._disarm_body_timer()
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

    # -- the body timer ----------------------------------------------------------------------

    def _disarm_body_timer(self) -> None:
        self._body_cycle = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        # the request being answered (only one is at a time) did not send its
        # whole body in time: 408 unless its answer began, and close
        cycle, self._body_cycle, self._body_timer = self._body_cycle, None, None
        if self.transport.is_closing() or cycle is None:
            return
        if not cycle.response_started:
            self.transport.write(response_408_body(self._body_timeout or 0))
        cycle.disconnected = True  # its app reads a disconnect; what it sends is dropped
        cycle.message_event.set()
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
            and exc.errno in ACCEPT_ERRNOS
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

    Raises the file descriptor limit first and runs our :class:`Server` with
    :class:`LimitedHttpToolsProtocol`.
    """
    raise_fd_limit()
    limits = (limits or ServerLimits()).resolved()
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
        fd_limit=open_file_limit(),
    )
    server = Server(config)
    server.run()
    return server.started
