"""Blocking store calls from the event loop: reads in worker threads, a bounded
number at once; writes through one lane per database."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio

__all__ = ["Blocking"]

P = ParamSpec("P")
T = TypeVar("T")


class Blocking:
    """Runs blocking functions (the store's) in worker threads; typed, so that
    what a store method returns is what its caller gets.

    Reads run at most ``threads`` at once. The delivery engine's writes (the
    outbox's group commit, the attempts' results, claims and releases,
    settings, the log's changes) go through :meth:`write`, at most ``writers``
    at once: one for SQLite, which writes one transaction at a time anyway (so
    that they queue here, in order, rather than contend for its lock from
    several threads), a few for PostgreSQL, whose row locks let writes that
    touch different rows go together. A write a client waits on with a bound
    of its own (a chat message's, ``WRITE_WAIT``) does not queue here behind a
    background write that waits out another process's lock: it takes the
    store's lock with its own deadline.
    """

    __slots__ = ("limiter", "writes")

    def __init__(self, threads: int = 4, writers: int = 1) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        #: the write lane (a batcher writes through it: its ``limiter``)
        self.writes = anyio.CapacityLimiter(writers)

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self.limiter)

    async def write(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` (a write) through the write lane."""
        call = functools.partial(fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self.writes)
