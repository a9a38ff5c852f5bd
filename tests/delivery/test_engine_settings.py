"""The delivery engine's endpoint settings: the signing secret kept across saves, the
test request sent on save (as ChatVolt does), and secret rotation."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from helpers import (
    AGENT,
    SECRET,
    StoreFactory,
    closed_port_url,
    config,
    deliveries,
    pipeline,
    reply,
    settings,
)
from receiver import Receiver, Recorded, Reply
from webhook_plugin import DeliveryEngine, WebhookSettings

pytestmark = pytest.mark.anyio


async def test_settings_save_keeps_the_secret_when_none_is_given(make_store: StoreFactory) -> None:
    async with DeliveryEngine(make_store(), config(workers=False)) as engine:
        first = await engine.save_settings(AGENT.id, WebhookSettings(url="http://127.0.0.1:9/"))
        again = await engine.save_settings(
            AGENT.id, msgspec.structs.replace(first, signing_secret=None)
        )
    assert first.signing_secret and first.signing_secret == again.signing_secret


async def test_saving_a_new_url_keeps_the_secret_receivers_verify_with(
    make_store: StoreFactory,
) -> None:
    async with DeliveryEngine(make_store(), config(workers=False)) as engine:
        first = await engine.save_settings(
            AGENT.id, WebhookSettings.validated(url="http://127.0.0.1:9/")
        )
        moved = await engine.save_settings(
            AGENT.id, WebhookSettings.validated(url="http://127.0.0.1:10/new")
        )
    assert first.signing_secret and moved.signing_secret == first.signing_secret


# -- the settings test (ChatVolt's test request on save) -------------------------------------


async def test_a_settings_test_sends_one_signed_request_and_queues_nothing(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url + "/hook"))
        result = await engine.test_endpoint(AGENT.id)
        assert await deliveries(engine) == []  # not queued, not in the log
    assert (result.status, result.status_code, result.error) == ("ok", 200, None)
    [got] = receiver.requests
    assert got.path == "/hook"
    assert got.headers["authorization"] == "Bearer s3cr3t-token-value"
    body = Webhook(SECRET).verify(got.body, got.headers)  # the reference library agrees
    assert body["eventType"] == "WEBHOOK_TEST" and body["agentId"] == AGENT.id
    assert set(body) == {"eventType", "agentId", "createdAt"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Reply(204, delay=0.3), ("slow", 204, None)),
        (Reply(500), ("unreachable", 500, "http_500")),
        (Reply(401), ("unreachable", 401, "http_401")),
        (Reply(301, headers={"Location": "http://127.0.0.1:9/"}), ("unreachable", 301, "http_301")),
        (Reply(200, delay=1.5), ("unreachable", None, "timeout")),
    ],
    ids=["slow", "500", "401", "redirect-not-followed", "timeout"],
)
async def test_a_settings_test_reports_slow_and_unreachable_endpoints(
    tmp_path: Path, answer: Reply, expected: tuple
) -> None:
    from webhook_plugin.storage.sqlite import SQLiteStore

    with Receiver(lambda r: answer) as rx:
        async with DeliveryEngine(SQLiteStore(tmp_path / "t.db"), config(timeout=1.0)) as engine:
            await engine.save_settings(AGENT.id, settings(rx.url))
            result = await engine.test_endpoint(AGENT.id, slow_after=0.15)
        await anyio.to_thread.run_sync(rx.wait_for, 1, 5)  # the timed-out one lands late
    got = (result.status, result.status_code, result.error and result.error.split(":")[0])
    assert got == expected
    assert len(rx.requests) == 1  # one request, never retried, redirects not followed
    assert "s3cr3t" not in str(result)


@pytest.mark.parametrize(
    ("url", "error"),
    [(closed_port_url(), "connect_error"), ("http://10.0.0.1/hook", "blocked_address")],
    ids=["closed-port", "private-address"],
)
async def test_a_settings_test_reports_addresses_it_cannot_or_may_not_reach(
    tmp_path: Path, url: str, error: str
) -> None:
    from webhook_plugin.storage.sqlite import SQLiteStore

    async with DeliveryEngine(SQLiteStore(tmp_path / "t.db"), config()) as engine:
        await engine.save_settings(AGENT.id, settings(url))
        result = await engine.test_endpoint(AGENT.id)
    assert (result.status, result.status_code) == ("unreachable", None)
    assert result.error is not None and result.error.startswith(error + ":")


async def test_a_settings_test_needs_a_url(tmp_path: Path) -> None:
    from webhook_plugin.exceptions import NotFound
    from webhook_plugin.storage.sqlite import SQLiteStore

    async with DeliveryEngine(SQLiteStore(tmp_path / "t.db"), config()) as engine:
        with pytest.raises(NotFound, match="no webhook URL"):
            await engine.test_endpoint(AGENT.id)


# -- secret rotation ---------------------------------------------------------------------------


async def test_a_rotation_without_grace_drops_the_old_secret_at_once(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        new_secret = await engine.rotate_secret(AGENT.id, grace=0)
        reply(pipeline(engine))
        [got] = await anyio.to_thread.run_sync(receiver.wait_for, 1)
    assert new_secret.startswith("whsec_") and new_secret != SECRET
    Webhook(new_secret).verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body, got.headers)


async def test_after_a_rotation_the_old_secret_still_verifies_until_the_grace_ends(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings(AGENT.id, settings(receiver.url))
        new_secret = await engine.rotate_secret(AGENT.id, grace=0.5)
        [during] = await _delivered(engine, receiver, 1)
        await anyio.sleep(0.6)  # the grace period ends
        [after] = await _delivered(engine, receiver, 2)
        # saving other settings keeps the secret, and a new rotation's grace with it
        await engine.rotate_secret(AGENT.id, grace=86400)
        third_secret = (await engine.get_settings(AGENT.id)).signing_secret
        await engine.save_settings(AGENT.id, WebhookSettings(url=receiver.url))  # no secret
        [kept] = await _delivered(engine, receiver, 3)
        # a different secret saved explicitly replaces the old one at once
        await engine.save_settings(AGENT.id, settings(receiver.url))
        [replaced] = await _delivered(engine, receiver, 4)
    assert len(during.headers["webhook-signature"].split()) == 2
    Webhook(new_secret).verify(during.body, during.headers)
    Webhook(SECRET).verify(during.body, during.headers)  # a receiver not yet updated
    assert len(after.headers["webhook-signature"].split()) == 1
    Webhook(new_secret).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(after.body, after.headers)
    Webhook(third_secret).verify(kept.body, kept.headers)
    Webhook(new_secret).verify(kept.body, kept.headers)
    assert len(replaced.headers["webhook-signature"].split()) == 1
    Webhook(SECRET).verify(replaced.body, replaced.headers)


async def _delivered(engine: DeliveryEngine, receiver: Receiver, total: int) -> list[Recorded]:
    reply(pipeline(engine))
    got = await anyio.to_thread.run_sync(receiver.wait_for, total)
    return got[total - 1 :]
