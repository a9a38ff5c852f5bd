"""The connection cap, enforced where connections are born: in ``accept()``.

:class:`GatedSocket` wraps the listening socket so that every accepted
connection passes through :class:`ConnectionGate` before asyncio or uvicorn
sees it: over the cap, the connection waiting longest for its first request
head makes room, or the newcomer gets ``503`` and is closed before it is read.

asyncio on purpose: like :mod:`.server`, this is a piece of uvicorn's server,
which runs on asyncio only, and only ``webhook-plugin serve`` imports it. The
app it serves, the plugin and the delivery engine use anyio and run on trio
too (the in-process API and console tests run on both)."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import weakref
from typing import Any

import structlog

from .limits import ACCEPT_ERRNOS, RESPONSE_503, Throttle

__all__ = ["ConnectionGate", "GatedSocket"]

log = structlog.get_logger("webhook_plugin.server")


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
                if exc.errno in ACCEPT_ERRNOS:
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
