"""A scripted raw TCP server on 127.0.0.1 that answers however a test tells it to.

It runs in its own threads, so it serves tests on asyncio and trio alike, like
:mod:`receiver` does, but it speaks no HTTP of its own: for every request it
reads (the head and its ``Content-Length`` body) it plays a *script*, a list of
steps:

- ``bytes``: sent as they are (:class:`Send` too);
- :class:`Sleep`: wait a while (a trickle is sends and sleeps, see :func:`trickle`);
- :class:`Close`: a clean close (FIN) after what was sent;
- :class:`Reset`: an abortive close (RST);
- :class:`Hold`: keep the connection open, reading nothing more, until the
  server stops (a receiver that never answers, or never finishes).

A script that ends without one of the last three leaves the connection open,
as a keep-alive server does: the next request on it plays the script again.
``script`` may also be a callable ``(request_number, raw_request) -> steps``.
With ``read_request=False`` the script plays as soon as a connection is
accepted, before anything is read.

Leaving the ``with`` block stops everything: the listening socket and every
connection are closed, held ones included, and the threads are joined.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Self

__all__ = [
    "Close",
    "Hold",
    "HostileServer",
    "Reset",
    "Send",
    "Sleep",
    "Step",
    "trickle",
]

_POLL = 0.02
_MAX_REQUEST_HEAD = 256 * 1024


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Reset:
    pass


@dataclass(frozen=True)
class Hold:
    pass


Step = bytes | Send | Sleep | Close | Reset | Hold
Script = Sequence[Step] | Callable[[int, bytes], Sequence[Step]]


def trickle(data: bytes, every: float, size: int = 1) -> list[Step]:
    """``data`` sent ``size`` bytes at a time, ``every`` seconds apart."""
    steps: list[Step] = []
    for i in range(0, len(data), size):
        if i:
            steps.append(Sleep(every))
        steps.append(data[i : i + size])
    return steps


class _Stopped(Exception):
    pass


@dataclass
class Connection:
    """What happened on one accepted connection."""

    requests: list[bytes] = field(default_factory=list)
    #: how it ended: "client" (the client hung up), "close", "reset", "hold", "stop"
    ended: str = ""
    #: bytes sent to the client
    sent: int = 0


class HostileServer:
    """Start with ``with HostileServer(script) as srv:``; ``srv.url`` is its URL."""

    def __init__(self, script: Script, *, read_request: bool = True, path: str = "/hook") -> None:
        self.script = script
        self.read_request = read_request
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._count = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(_POLL)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    # lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        with self._lock:
            socks = list(self._socks)
            threads = list(self._threads)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5)
        for sock in socks:
            sock.close()
        self._listener.close()
        stuck = [t for t in [self._acceptor, *threads] if t.is_alive()]
        if stuck:  # pragma: no cover - a bug in this helper
            raise RuntimeError(f"hostile server threads did not stop: {stuck}")

    @property
    def request_count(self) -> int:
        with self._lock:
            return sum(len(c.requests) for c in self.connections)

    # serving --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            record = Connection()
            thread = threading.Thread(target=self._serve, args=(sock, record), daemon=True)
            with self._lock:
                if self._stop.is_set():
                    sock.close()
                    return
                self._socks.add(sock)
                self.connections.append(record)
                # finished ones are forgotten: a long run must not hold them all
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, record: Connection) -> None:
        buf = bytearray()
        try:
            while True:
                raw = b""
                if self.read_request:
                    raw = self._read_request(sock, buf)
                    if raw is None:
                        record.ended = "client"
                        return
                with self._lock:
                    record.requests.append(raw)
                    number = self._count
                    self._count += 1
                steps = self.script(number, raw) if callable(self.script) else self.script
                for step in steps:
                    if isinstance(step, bytes | bytearray | Send):
                        data = step.data if isinstance(step, Send) else bytes(step)
                        self._send(sock, data)
                        record.sent += len(data)
                    elif isinstance(step, Sleep):
                        if self._stop.wait(step.seconds):
                            raise _Stopped
                    elif isinstance(step, Close):
                        record.ended = "close"
                        try:
                            sock.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        self._drain(sock)
                        return
                    elif isinstance(step, Reset):
                        record.ended = "reset"
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        return
                    elif isinstance(step, Hold):
                        record.ended = "hold"
                        self._stop.wait()
                        return
                    else:  # pragma: no cover - a bad script
                        raise TypeError(f"not a script step: {step!r}")
                if not self.read_request:
                    record.ended = "hold"
                    self._stop.wait()
                    return
        except _Stopped:
            record.ended = record.ended or "stop"
        except OSError:
            record.ended = record.ended or "client"  # the client hung up on us
        finally:
            with self._lock:
                self._socks.discard(sock)
            sock.close()

    def _wait(self, sock: socket.socket, *, write: bool) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            r, w, _ = select.select([] if write else [sock], [sock] if write else [], [], _POLL)
            if r or w:
                return

    def _recv(self, sock: socket.socket) -> bytes:
        self._wait(sock, write=False)
        try:
            return sock.recv(65536)
        except BlockingIOError:
            return self._recv(sock)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait(sock, write=True)
            try:
                sent = sock.send(view[:65536])
            except BlockingIOError:
                continue
            view = view[sent:]

    def _drain(self, sock: socket.socket) -> None:
        """After our FIN, read until the client closes too (or the server stops), so
        that unread request bytes do not turn our close into a reset."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                if not self._recv(sock):
                    return
            except OSError:
                return

    def _read_request(self, sock: socket.socket, buf: bytearray) -> bytes | None:
        """One request (head and ``Content-Length`` body), or None when the client
        closed the connection first."""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > _MAX_REQUEST_HEAD:
                raise OSError("request head too large")
            chunk = self._recv(sock)
            if not chunk:
                return None
            buf += chunk
        head = bytes(buf[: end + 4])
        length = _content_length(head)
        while len(buf) < end + 4 + length:
            chunk = self._recv(sock)
            if not chunk:
                return None
            buf += chunk
        raw = bytes(buf[: end + 4 + length])
        del buf[: end + 4 + length]
        return raw


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0
