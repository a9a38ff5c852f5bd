"""One receiver, one row, one bug cannot stop delivery for the others, and when the
engine is not well the process says so."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import pytest
from structlog.testing import capture_logs

from helpers import AGENT_MSG, CONVERSATION, USER_MSG, config, pipeline
from receiver import Receiver
from webhook_plugin import Agent, DeliveryEngine, WebhookSettings
from webhook_plugin.storage.base import Store

pytestmark = pytest.mark.anyio

StoreFactory = Callable[[], Store]


@contextmanager
def black_hole() -> Iterator[str]:
    """A loopback server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(512)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join()
        server.close()
        for conn in held:
            conn.close()


def fire(engine: DeliveryEngine, agent_id: str, count: int) -> list:
    pm = pipeline(engine)
    tickets = []
    for _ in range(count):
        tickets += pm.hook.on_agent_reply(
            agent=Agent(id=agent_id),
            conversation=CONVERSATION,
            message=AGENT_MSG,
            in_reply_to=USER_MSG,
        )
    return tickets


async def test_endpoints_that_never_answer_hold_only_their_own_slots(
    make_store: StoreFactory,
) -> None:
    # 5 endpoints that never answer, 20 events each, 16 workers: without lanes
    # they take every worker until the first attempts time out
    timeout = 4.0
    with black_hole() as hole, Receiver() as healthy:
        cfg = config(concurrency=16, per_endpoint_concurrency=16, timeout=timeout)
        async with DeliveryEngine(make_store(), cfg) as engine:
            for n in range(5):
                await engine.save_settings(f"hang{n}", WebhookSettings(url=hole))
                for t in fire(engine, f"hang{n}", 20):
                    await t
            await anyio.sleep(0.3)  # the hanging attempts are under way
            await engine.save_settings("healthy", WebhookSettings(url=healthy.url))
            started = anyio.current_time()
            for t in fire(engine, "healthy", 30):
                await t
            await anyio.to_thread.run_sync(healthy.wait_for, 30, timeout)
            waited = anyio.current_time() - started
            hanging = [
                d for n in range(5) for d in await engine.list_deliveries(agent_id=f"hang{n}")
            ]
        # every healthy event arrived before a single hanging attempt timed out
        assert waited < timeout - 0.5
        assert all(d.attempts == 0 for d in hanging)
        assert engine.dispatcher.lanes.busy == {"quick": 0, "new": 0, "slow": 0}


async def test_a_loop_that_crashes_is_restarted_and_reported(
    make_store: StoreFactory,
) -> None:
    with Receiver() as rx:
        engine = DeliveryEngine(make_store(), config())
        calls = 0
        claim_loop = engine.dispatcher._claim_loop

        async def crash_once() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug of ours")
            await claim_loop()

        engine.dispatcher._claim_loop = crash_once  # type: ignore[method-assign]
        assert engine.health() == "the delivery engine is not running"
        with capture_logs() as logs:
            async with engine:
                await engine.save_settings("a", WebhookSettings(url=rx.url))
                with anyio.fail_after(5):
                    while engine.health() is None:
                        await anyio.sleep(0.01)
                assert engine.health() == "dispatcher failed (RuntimeError)"
                # restarted: events still go out
                for t in fire(engine, "a", 3):
                    await t
                await anyio.to_thread.run_sync(rx.wait_for, 3)
        failed = [e for e in logs if e["event"] == "engine.task_failed"]
        assert len(failed) == 1 and failed[0]["task"] == "dispatcher"
        assert "a bug of ours" in repr(failed[0]["exc_info"])  # the traceback is logged
        assert any(e["event"] == "engine.task_restarted" for e in logs)
