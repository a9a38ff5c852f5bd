"""The dispatcher's coordination: anyio memory-object streams, and one-token signals."""

from __future__ import annotations

import contextlib
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Stream", "signal", "wait"]

T = TypeVar("T")


class Stream(Generic[T]):
    """Both ends of one memory-object stream."""

    __slots__ = ("receive", "send")

    def __init__(
        self, send: MemoryObjectSendStream[T], receive: MemoryObjectReceiveStream[T]
    ) -> None:
        self.send, self.receive = send, receive

    @classmethod
    def open(cls, size: int) -> Stream[T]:
        send, receive = anyio.create_memory_object_stream[T](size)
        return cls(send, receive)

    def close(self) -> None:
        self.send.close()
        self.receive.close()


def signal(stream: Stream[None] | None) -> None:
    """Leave a token (one is enough: a second one is dropped)."""
    if stream is not None:
        with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
            stream.send.send_nowait(None)


async def wait(tokens: MemoryObjectReceiveStream[None], timeout: float | None = None) -> None:
    """Take a token, or return after ``timeout`` seconds or once the stream is closed."""
    with anyio.move_on_after(timeout):
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            await tokens.receive()
