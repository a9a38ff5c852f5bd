"""The group-commit batcher on its own, with a scripted writer (pure logic)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


class Refusing:
    """Refuses every chunk holding one of ``poison`` (as a database refuses a
    row), or every chunk at all while ``down``; commits the others."""

    def __init__(self, poison: set[int], down: bool = False) -> None:
        self.poison, self.down = poison, down
        self.committed: list[int] = []

    def __call__(self, chunk: Sequence[int]) -> None:
        if self.down or self.poison & set(chunk):
            raise StorageError("refused")
        self.committed += chunk


async def isolate_batch(writer: Refusing, items: list[int]) -> list[Sequence[int]]:
    written: list[Sequence[int]] = []
    batcher: Batcher[int] = Batcher(
        writer, on_written=written.append, retries=1, isolate=lambda i: {"item": i}
    )
    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        batches = [batcher.submit(i) for i in items]
        for batch in batches:
            with pytest.raises(StorageError) if writer.poison or writer.down else nullcontext():
                await batch.wait()
        batcher.close()
    return written


@given(st.lists(st.integers(0, 10**6), min_size=2, max_size=300, unique=True), st.data())
def test_items_the_store_refuses_are_left_out_and_the_others_written(
    items: list[int], data: st.DataObject
) -> None:
    """One refused item (a row the database will not take) costs only itself:
    every other item of its batch is written, once, and reported written."""
    poison = data.draw(st.sampled_from(items))
    writer = Refusing({poison})
    written = anyio.run(isolate_batch, writer, items)
    assert sorted(writer.committed) == sorted(set(items) - {poison})
    assert sorted(i for chunk in written for i in chunk) == sorted(writer.committed)


async def test_a_store_that_refuses_everything_fails_the_batch_whole() -> None:
    """Down, not picky: the halves are tried once, not one write per item."""
    calls = 0
    writer = Refusing(set(), down=True)

    def counting(chunk: Sequence[int]) -> None:
        nonlocal calls
        calls += 1
        writer(chunk)

    batcher: Batcher[int] = Batcher(counting, retries=1, isolate=lambda i: {"item": i})
    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        batches = [batcher.submit(i) for i in range(1000)]
        for batch in batches:
            with pytest.raises(StorageError):
                await batch.wait()
        batcher.close()
    assert calls == 2 + 2  # the write and its retry, then the two halves
    assert writer.committed == []
