"""Blocking store calls from the event loop: a worker thread, a bounded number at once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio

__all__ = ["Blocking"]

P = ParamSpec("P")
T = TypeVar("T")


class Blocking:
    """Runs blocking functions (the store's) in worker threads, at most
    ``threads`` at once; typed, so that what a store method returns is what
    its caller gets."""

    __slots__ = ("limiter",)

    def __init__(self, threads: int = 4) -> None:
        self.limiter = anyio.CapacityLimiter(threads)

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self.limiter)
