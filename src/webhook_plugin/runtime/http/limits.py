"""The limits ``webhook-plugin serve`` applies to its clients, and the pieces they
need: the open-file limit, log throttles, the minimal answers sent to refused
connections. See :mod:`.server` for how they are applied.

asyncio on purpose: like :mod:`.server`, this is a piece of uvicorn's server,
which runs on asyncio only, and only ``webhook-plugin serve`` imports it. The
app it serves, the plugin and the delivery engine use anyio and run on trio
too (the in-process API and console tests run on both)."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import msgspec
import structlog

__all__ = [
    "RESPONSE_408",
    "RESPONSE_431",
    "RESPONSE_503",
    "ServerLimits",
    "ACCEPT_ERRNOS",
    "Throttle",
    "ThrottleFilter",
    "default_max_connections",
    "open_file_limit",
    "raise_fd_limit",
    "response_408_body",
]

log = structlog.get_logger("webhook_plugin.server")

#: accept() failures that mean "out of descriptors or memory"
ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


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


def open_file_limit() -> int | None:
    """The soft limit on open files, or None when unlimited (or unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def default_max_connections(fd_limit: int | None = None) -> int:
    """Half the file descriptor limit (the rest is for delivery, whose client
    keeps up to 512 idle connections, and the database), between 64 and 4,096."""
    fd_limit = fd_limit if fd_limit is not None else open_file_limit()
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


def response_408_body(timeout: float) -> bytes:
    """The answer to a request whose body did not all arrive within ``timeout`` s."""
    return _response(
        b"408 Request Timeout",
        "request_timeout",
        f"the request body did not arrive within {timeout:g} seconds",
    )


RESPONSE_431 = _response(
    b"431 Request Header Fields Too Large", "head_too_large", "the request head is too large"
)
