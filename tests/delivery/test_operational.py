"""Operational events: an agent's endpoint failing, disabled, recovered, and a
delivery exhausted, each told once per condition to the agent's operations URL
(signed, as a Standard Webhook) and to a plugin's hooks."""

from __future__ import annotations

import json

import anyio
import anyio.lowlevel
import pytest
from standardwebhooks.webhooks import Webhook

from helpers import SECRET, StoreFactory, config, pipeline, reply, settings, wait_until
from receiver import Receiver, Reply
from webhook_plugin import DeliveryEngine, PluginManager, hookimpl
from webhook_plugin.payloads import OperationalEvent

pytestmark = pytest.mark.anyio


class Pager:
    """A third party's plugin that pages someone."""

    def __init__(self) -> None:
        self.heard: list[OperationalEvent] = []

    @hookimpl
    def on_endpoint_failing(self, event: OperationalEvent) -> None:
        self.heard.append(event)

    @hookimpl
    def on_endpoint_disabled(self, event: OperationalEvent) -> None:
        self.heard.append(event)

    @hookimpl
    def on_endpoint_recovered(self, event: OperationalEvent) -> None:
        self.heard.append(event)

    @hookimpl
    def on_delivery_exhausted(self, event: OperationalEvent) -> None:
        self.heard.append(event)


def told(ops: Receiver) -> list[dict]:
    """What the operations URL received, each checked as a Standard Webhook."""
    got = []
    for r in ops.requests:
        assert "authorization" not in r.headers  # the webhook's header is not the ops URL's
        got.append(Webhook(SECRET).verify(r.body, r.headers))
    return got


async def engine_with(make_store: StoreFactory, pager: Pager, **cfg: object) -> DeliveryEngine:
    engine = DeliveryEngine(make_store(), config(**cfg))
    pm = PluginManager()
    pm.register(pager)
    engine.report_to(pm.hook)
    return engine


async def test_each_exhausted_delivery_is_told_once(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    receiver.behaviour = lambda r: Reply(503)
    pager = Pager()
    with Receiver() as ops:
        engine = await engine_with(make_store, pager, retry_schedule=(0, 0.02, 0.02))
        async with engine:
            await engine.save_settings(
                "support", settings(receiver.url, operations_url=ops.url + "/ops")
            )
            tickets = reply(pipeline(engine), 2)
            for t in tickets:
                await t
            await anyio.to_thread.run_sync(lambda: ops.wait_for(2))
            await wait_until(lambda: len(pager.heard) >= 2)
            await anyio.lowlevel.checkpoint()
    events = told(ops)
    assert sorted(e["webhookId"] for e in events) == sorted(t.webhook_id for t in tickets)
    assert {e["eventType"] for e in events} == {"DELIVERY_EXHAUSTED"}
    assert all(e["url"] == receiver.url and e["reason"] == "http_503" for e in events)
    assert all(isinstance(e["deliveryId"], int) for e in events)
    assert sorted(e.webhook_id for e in pager.heard) == sorted(t.webhook_id for t in tickets)
    assert len(receiver.requests) == 6  # three attempts each; the ops URL's own are apart


async def test_failing_then_disabled_then_recovered_each_told_once(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    state = {"status": 503}
    receiver.behaviour = lambda r: Reply(state["status"])
    pager = Pager()
    with Receiver() as ops:
        cfg = {"retry_schedule": (0,) + (0.03,) * 49, "disable_after": 1.0}
        engine = await engine_with(make_store, pager, **cfg)
        async with engine:
            s = settings(receiver.url, operations_url=ops.url + "/ops")
            await engine.save_settings("support", s)
            [ticket] = reply(pipeline(engine))
            await ticket
            await wait_until(lambda: any(e.event_type == "ENDPOINT_DISABLED" for e in pager.heard))
            held = await engine.list_deliveries(agent_id="support", status="held")
            assert [d.webhook_id for d in held] == [ticket.webhook_id]
            state["status"] = 200
            await engine.save_settings("support", s)  # enabled again: the held one goes
            await wait_until(lambda: any(e.event_type == "ENDPOINT_RECOVERED" for e in pager.heard))
            await anyio.to_thread.run_sync(lambda: ops.wait_for(5))
    kinds = [e["eventType"] for e in told(ops)]
    assert kinds == ["ENDPOINT_FAILING"] * 3 + ["ENDPOINT_DISABLED", "ENDPOINT_RECOVERED"]
    assert [str(e.event_type) for e in pager.heard] == kinds
    reasons = [e["reason"] for e in told(ops)]
    assert reasons[:3] == [
        f"failing without a success for {share} of the auto-disable window"
        for share in ("1%", "25%", "75%")
    ]
    assert "failing without a success" in reasons[3]
    assert json.loads(receiver.requests[-1].body)["sequence"] == 1
