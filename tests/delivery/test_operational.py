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
from receiver import Receiver, Recorded, Reply
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


async def test_after_a_re_enable_a_new_failing_spell_is_told_again(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    """Enabled again and failing again: the shares are told anew, then the
    disabling; one success after that says recovered."""
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
            await wait_until(lambda: sum(e.event_type == "ENDPOINT_DISABLED" for e in pager.heard))
            await engine.save_settings("support", s)  # enabled again, still failing
            await wait_until(
                lambda: sum(e.event_type == "ENDPOINT_DISABLED" for e in pager.heard) == 2
            )
            state["status"] = 200
            await engine.save_settings("support", s)
            await wait_until(lambda: any(e.event_type == "ENDPOINT_RECOVERED" for e in pager.heard))
    kinds = [str(e.event_type) for e in pager.heard]
    spell = ["ENDPOINT_FAILING"] * 3 + ["ENDPOINT_DISABLED"]
    assert kinds == spell + spell + ["ENDPOINT_RECOVERED"]


async def test_the_operations_url_is_retried_on_its_own_answers(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    """The agent's endpoint has failed for the whole window; the operations URL
    failing once is retried like any receiver, not judged by that window."""
    receiver.behaviour = lambda r: Reply(503)
    refused: list[bytes] = []

    def operations(r: Recorded) -> Reply:
        # the first ENDPOINT_DISABLED is refused: sent after the window ran out
        if b"ENDPOINT_DISABLED" in r.body and not refused:
            refused.append(r.headers["webhook-id"].encode())
            return Reply(502)
        return Reply(200)

    pager = Pager()
    with Receiver(operations) as ops:
        cfg = {"retry_schedule": (0,) + (0.03,) * 49, "disable_after": 0.3}
        engine = await engine_with(make_store, pager, **cfg)
        async with engine:
            await engine.save_settings(
                "support", settings(receiver.url, operations_url=ops.url + "/ops")
            )
            [ticket] = reply(pipeline(engine))
            await ticket

            def disabled_told() -> bool:
                return any(b"ENDPOINT_DISABLED" in r.body and r.status == 200 for r in ops.requests)

            await wait_until(disabled_told)
    tries = [r for r in ops.requests if b"ENDPOINT_DISABLED" in r.body]
    assert [r.status for r in tries] == [502, 200]
    assert tries[0].headers["webhook-id"] == tries[1].headers["webhook-id"]
