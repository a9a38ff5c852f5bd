"""The group-commit batcher on its own, with a scripted writer (pure logic)."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from webhook_plugin.delivery.outbox import Batcher
from webhook_plugin.exceptions import StorageError

pytestmark = pytest.mark.anyio


class Writer:
    """Commits chunks; fails once on the chunk that starts with ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.committed: list[int] = []

    def __call__(self, chunk: Sequence[int]) -> None:
        if chunk[0] == self.fail_at:
            self.fail_at = None
            raise StorageError("database is locked")
        self.committed += chunk


async def run_batch(writer: Writer, retries: int, items: range) -> list[object]:
    batcher: Batcher[int] = Batcher(writer, max_batch=3, retries=retries)
    outcomes: list[object] = []
    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        batches = [batcher.submit(i) for i in items]
        for batch in batches:
            try:
                await batch.wait()
                outcomes.append("stored")
            except StorageError as exc:
                outcomes.append(str(exc))
        batcher.close()
    return outcomes


async def test_a_retry_after_a_failed_chunk_does_not_write_earlier_chunks_again() -> None:
    writer = Writer(fail_at=3)  # the second of three chunks fails once
    outcomes = await run_batch(writer, retries=2, items=range(8))
    assert writer.committed == list(range(8))  # each item exactly once, in order
    assert outcomes == ["stored"] * 8


async def test_without_retries_the_waiters_get_the_error() -> None:
    writer = Writer(fail_at=0)
    outcomes = await run_batch(writer, retries=0, items=range(2))
    assert outcomes == ["the outbox could not store the event: database is locked"] * 2
    assert writer.committed == []
