"""The group-commit batcher on its own, with a scripted writer (pure logic)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

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
    row), and every chunk at all once ``up`` more chunks were committed (it
    went down); commits the others."""

    def __init__(self, poison: set[int], up: int | None = None) -> None:
        self.poison, self.up = poison, up
        self.committed: list[int] = []
        self.calls = 0

    def __call__(self, chunk: Sequence[int]) -> None:
        self.calls += 1
        if self.up is not None and self.up <= 0:
            raise StorageError("database is locked")
        if self.poison & set(chunk):
            raise StorageError("refused")
        self.committed += chunk
        if self.up is not None:
            self.up -= 1


async def isolate_batch(writer: Refusing, items: list[int]) -> list[Sequence[int]]:
    """Submit ``items`` as one batch (no retries: isolation at once)."""
    written: list[Sequence[int]] = []
    batcher: Batcher[int] = Batcher(writer, on_written=written.append, isolate=lambda i: {"i": i})
    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        batches = [batcher.submit(i) for i in items]
        for batch in batches:
            with contextlib.suppress(StorageError):
                await batch.wait()
        batcher.close()
    return written


@given(
    st.lists(st.integers(0, 10**6), min_size=2, max_size=300, unique=True),
    st.integers(1, 2),
    st.data(),
)
def test_items_the_store_refuses_are_left_out_and_the_others_written(
    items: list[int], refused: int, data: st.DataObject
) -> None:
    """A refused item or two (rows the database will not take) cost only
    themselves: every other item of the batch is written, once, and reported
    written."""
    poison = set(data.draw(st.lists(st.sampled_from(items), min_size=refused, max_size=refused)))
    writer = Refusing(poison)
    written = anyio.run(isolate_batch, writer, items)
    assert sorted(writer.committed) == sorted(set(items) - poison)
    assert sorted(i for chunk in written for i in chunk) == sorted(writer.committed)


@given(st.integers(2, 5000), st.integers(0, 50))
def test_a_store_that_goes_down_is_not_asked_item_by_item(n: int, up: int) -> None:
    """Down from the start, or after a few writes: a bounded number of writes
    (not one per item), nothing committed twice, and what was committed is
    reported written."""
    writer = Refusing(set(), up=up)
    written = anyio.run(isolate_batch, writer, list(range(n)))
    assert writer.calls <= 1 + up + 8 + 2 * n.bit_length() + 1
    assert sorted(writer.committed) == sorted(set(writer.committed))
    assert sorted(i for chunk in written for i in chunk) == sorted(writer.committed)
