"""The dispatcher's claim loop, with a scripted store and client (pure logic)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import anyio.from_thread
import pytest

from webhook_plugin.delivery.client import Response
from webhook_plugin.delivery.dispatcher import Dispatcher
from webhook_plugin.delivery.retry import RetryPolicy
from webhook_plugin.events import WebhookEventType
from webhook_plugin.settings import WebhookSettings, generate_secret
from webhook_plugin.storage.base import AttemptResult, ClaimedDelivery

pytestmark = pytest.mark.anyio

SETTINGS = WebhookSettings.validated(url="http://hooks.example/", signing_secret=generate_secret())


def delivery(i: int) -> ClaimedDelivery:
    return ClaimedDelivery(
        id=i,
        webhook_id=f"msg_{i}",
        agent_id="a",
        event_type=WebhookEventType.AGENT_USER_MESSAGE,
        body=b"{}",
        created_at=0.0,
        attempts=0,
        round_attempts=0,
        lease_until=time.time() + 60,
        settings=SETTINGS,
        failing_since=None,
    )


class ScriptedStore:
    """Answers claims from a script; the third claim lets every attempt in flight
    finish while it runs, as a slow claim on a busy database would."""

    def __init__(self, release: anyio.Event) -> None:
        self.release = release
        self.claims = 0

    def claim_due(
        self,
        *,
        now: float,
        limit: int,
        lease_until: float,
        owner: str,
        skip_agents: Sequence[str] = (),
    ) -> list[ClaimedDelivery]:
        self.claims += 1
        if self.claims == 1:
            return [delivery(1), delivery(2)]  # fills both slots
        if self.claims == 2:
            return [delivery(3)]  # waits in the local queue: no slot free
        if self.claims == 3:
            anyio.from_thread.run_sync(self.release.set)
            time.sleep(0.2)  # the two attempts end meanwhile
        return []

    def release_leases(self, *args: object) -> None:  # pragma: no cover
        pass


class GatedClient:
    def __init__(self, release: anyio.Event) -> None:
        self.release = release
        self.posted: list[str] = []

    async def post(
        self, url: str, headers: Sequence[tuple[str, str]], body: bytes, **kw: object
    ) -> Response:
        self.posted.append(dict(headers)["webhook-id"])
        await self.release.wait()
        return Response(200, {}, b"")

    async def aclose(self) -> None:  # pragma: no cover
        pass


async def test_queued_work_starts_when_slots_free_during_a_claim() -> None:
    release = anyio.Event()
    store, client = ScriptedStore(release), GatedClient(release)
    results: list[AttemptResult] = []
    dispatcher = Dispatcher(
        store,  # type: ignore[arg-type]
        client,
        results.append,
        policy=RetryPolicy(),
        concurrency=2,
        poll_interval=0.05,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(dispatcher.run)
        with anyio.fail_after(3):
            while len(results) < 3:
                await anyio.sleep(0.01)
        await dispatcher.stop(grace=1)
    assert sorted(client.posted) == ["msg_1", "msg_2", "msg_3"]
    assert all(r.status == "succeeded" for r in results)


def test_an_endpoint_parked_for_its_lane_is_woken_when_the_lane_frees() -> None:
    """Two new endpoints, one slot for new ones: the second waits for the lane, not
    for a slot of its own, and must get it when the first's probe ends (its
    endpoint becomes quick meanwhile)."""
    import time as _time
    from collections import deque

    from webhook_plugin.delivery.dispatcher import Dispatcher
    from webhook_plugin.delivery.retry import RetryPolicy
    from webhook_plugin.events import WebhookEventType
    from webhook_plugin.storage.base import ClaimedDelivery

    def claimed(i: int, agent: str) -> ClaimedDelivery:
        return ClaimedDelivery(
            id=i, webhook_id=f"w{i}", agent_id=agent, event_type=WebhookEventType.AGENT_USER_MESSAGE,
            body=b"{}", created_at=0.0, attempts=0, round_attempts=0,
            lease_until=_time.time() + 60, settings=None, failing_since=None,
        )  # fmt: skip

    d = Dispatcher(None, None, lambda r: None, policy=RetryPolicy(), concurrency=2)  # type: ignore[arg-type]
    d._ready = deque([claimed(1, "a"), claimed(2, "a"), claimed(3, "b")])
    first = d._next()
    assert first is not None and first[0].agent_id == "a" and first[1] == "new"
    assert d._next() is None  # a's second waits for a's probe, b for the new lane
    d.lanes.observe("a", slow=False)  # a's probe answered quickly
    d._slot_freed("a", "new")
    agents = []
    while (taken := d._next()) is not None:
        agents.append(taken[0].agent_id)
    assert sorted(agents) == ["a", "b"]
