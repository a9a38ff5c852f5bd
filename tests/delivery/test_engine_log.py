"""The delivery engine's log of deliveries: failed ones kept and redelivered, finished
ones purged after the retention."""

from __future__ import annotations

import time

import pytest

from helpers import AGENT, StoreFactory, config, pipeline, reply, settings, wait_until_status
from receiver import Receiver, Reply
from webhook_plugin import DeliveryEngine
from webhook_plugin.exceptions import Expired

pytestmark = pytest.mark.anyio


async def test_after_the_last_attempt_the_delivery_is_failed_and_kept_then_redelivered(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    fail = True
    receiver.behaviour = lambda r: Reply(503 if fail else 204)
    async with DeliveryEngine(make_store(), config(retry_schedule=(0, 0.02, 0.02))) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        [ticket] = reply(pipeline(engine))
        [failed] = await wait_until_status(engine, "failed")
        assert failed.attempts == 3 and failed.last_error == "http_503"
        assert failed.next_attempt_at is None
        fail = False
        await engine.redeliver(failed.id, AGENT.id)
        [done] = await wait_until_status(engine, "succeeded")
    assert done.webhook_id == ticket.webhook_id
    assert done.attempts == 4
    assert [r.headers["webhook-id"] for r in receiver.requests] == [ticket.webhook_id] * 4


async def test_redeliver_every_failed_since(make_store: StoreFactory, receiver: Receiver) -> None:
    fail = True
    receiver.behaviour = lambda r: Reply(500 if fail else 200)
    async with DeliveryEngine(make_store(), config(retry_schedule=(0,))) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        reply(pipeline(engine), 3)
        await wait_until_status(engine, "failed", 3)
        fail = False
        assert await engine.redeliver_failed(agent_id=AGENT.id, since=time.time() - 60) == 3
        await wait_until_status(engine, "succeeded", 3)


async def test_finished_deliveries_payloads_expire_after_the_retention(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    async with DeliveryEngine(make_store(), config(retry_schedule=(0, 60))) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        reply(pipeline(engine), 3)
        done = await wait_until_status(engine, "succeeded", 3)
        receiver.behaviour = lambda r: Reply(500)
        reply(pipeline(engine))
        # a new delivery is "pending" before its first attempt too: wait for the attempt
        [pending] = await wait_until_status(engine, "pending", min_attempts=1)
        assert pending.attempts == 1
        assert await engine.purge_log(older_than=3600) == 0  # all younger than an hour
        assert await engine.purge_log(older_than=-1) == 3  # every finished one expires
        assert await engine.purge_log(older_than=-1) == 0  # once
        left = await engine.list_deliveries(agent_id=AGENT.id)
        # still in the log, their payloads and attempts gone; pending ones untouched
        assert sorted(d.id for d in left) == sorted([pending.id, *(d.id for d in done)])
        assert {d.id: d.body == b"" for d in left} == {
            pending.id: False,
            **{d.id: True for d in done},
        }
        assert await engine.list_attempts(done[0].id) == []
        assert await engine.list_attempts(pending.id) != []
        with pytest.raises(Expired, match="expired after the retention"):
            await engine.redeliver(done[0].id)
        assert await engine.recover(AGENT.id, since=0) == 0  # nothing of them can be sent
