"""Secrets stay secret: a rotation cannot be undone by a concurrent save, what a
receiver echoes back is stored without our header value or signing secret, and the
engine's logs name events but never a secret."""

from __future__ import annotations

import json

import anyio
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from helpers import (
    AGENT,
    SECRET,
    StoreFactory,
    config,
    pipeline,
    reply,
    settings,
    wait_until,
    wait_until_status,
)
from receiver import Receiver, Reply
from webhook_plugin import DeliveryEngine, WebhookSettings

pytestmark = pytest.mark.anyio


async def test_a_rotation_racing_a_settings_save_is_never_undone(
    make_store: StoreFactory,
) -> None:
    async with DeliveryEngine(make_store(), config()) as engine:
        await engine.save_settings("support", WebhookSettings(url="http://127.0.0.1:9/"))
        for _ in range(100):
            rotated: list[str] = []

            async def rotate(rotated: list[str] = rotated) -> None:
                rotated.append(await engine.rotate_secret("support"))

            async def save() -> None:
                await engine.save_settings(
                    "support", WebhookSettings.validated(url="http://127.0.0.1:9/a")
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(save)
                tg.start_soon(rotate)
            stored = await engine.get_settings("support")
            assert stored is not None and stored.signing_secret == rotated[0]
            assert engine.settings_for("support").signing_secret == rotated[0]  # type: ignore[union-attr]


async def test_an_echoing_receiver_does_not_put_our_header_in_the_log(
    make_store: StoreFactory,
) -> None:
    token = "s3cr3t-token-value-0123456789"

    def echo(request) -> Reply:  # type: ignore[no-untyped-def]
        # as httpbin does: every request header back, in JSON, then the secret raw
        body = json.dumps({"headers": request.headers}).encode()
        return Reply(502, body=body + f" {SECRET} Bearer {token}".encode())

    with Receiver(echo) as rx:
        async with DeliveryEngine(make_store(), config(retry_schedule=(0,))) as engine:
            await engine.save_settings(
                "support",
                WebhookSettings.validated(
                    url=rx.url, header=f"Authorization: Bearer {token}", signing_secret=SECRET
                ),
            )
            for t in reply(pipeline(engine)):
                await t
            [failed] = await wait_until(
                lambda: engine.store.list_deliveries(agent_id="support", status="failed")
            )
            [attempt] = await engine.list_attempts(failed.id)
    excerpt = attempt.response_excerpt
    assert excerpt is not None and "webhook-signature" in excerpt.lower()  # it was echoed
    assert token not in excerpt and SECRET not in excerpt and SECRET[6:] not in excerpt
    assert "****" in excerpt
    # a secret cut by the excerpt's end leaves no prefix of itself either
    from webhook_plugin.delivery.redaction import redact

    cut = redact(("x" * 500 + token)[:510], (token,))
    assert token[:6] not in cut and cut.endswith("****")


# -- through the HTTP API -------------------------------------------------------------------


@pytest.fixture
async def api(tmp_path):  # type: ignore[no-untyped-def]
    import httpx

    from webhook_plugin.runtime.app import create_app
    from webhook_plugin.runtime.config import parse_config

    cfg = parse_config(
        {
            "runtime": {"database": f"sqlite:///{tmp_path / 'api.db'}"},
            "webhook": {"allow_private_hosts": ["127.0.0.1"], "settings_refresh": 0},
        }
    )
    app = create_app(cfg)
    async with app.running() as pipeline:  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client, pipeline


async def test_a_masked_header_is_kept_only_for_the_same_origin(api) -> None:  # type: ignore[no-untyped-def]
    client, pipeline = api
    first = {"url": "https://hooks.example.com/a", "header": "Authorization: Bearer t0ken-1"}
    r = await client.put("/v1/agents/support/webhook", json=first)
    masked = r.json()["header"]
    assert masked == "Authorization: ****"
    same_origin = {"url": "https://hooks.example.com/b?x=1", "header": masked}
    r = await client.put("/v1/agents/support/webhook", json=same_origin)
    assert r.status_code == 200
    stored = await pipeline.engine.get_settings("support")
    assert stored.header == "Authorization: Bearer t0ken-1"
    for elsewhere in (
        "https://attacker.example/",
        "http://hooks.example.com/b",
        "https://hooks.example.com:8443/b",
    ):
        r = await client.put(
            "/v1/agents/support/webhook", json={"url": elsewhere, "header": masked}
        )
        assert r.status_code == 400, elsewhere
        assert r.json()["error"]["message"].startswith("header: the masked value (****)")
        assert "t0ken" not in r.text
    assert (await pipeline.engine.get_settings("support")).url == "https://hooks.example.com/b?x=1"
    # typed again, the header goes with the new host
    r = await client.put(
        "/v1/agents/support/webhook",
        json={"url": "https://other.example/", "header": "Authorization: Bearer t0ken-2"},
    )
    assert r.status_code == 200


async def test_rotations_racing_settings_puts_through_the_api(api) -> None:  # type: ignore[no-untyped-def]
    client, pipeline = api
    body = {"url": "http://127.0.0.1:9/h", "header": "X-Key: k3y-value"}
    assert (await client.put("/v1/agents/support/webhook", json=body)).status_code == 200
    for _ in range(100):
        rotated: list[str] = []

        async def rotate(rotated: list[str] = rotated) -> None:
            r = await client.post("/v1/agents/support/webhook/rotate-secret")
            rotated.append(r.json()["signingSecret"])

        async def put() -> None:
            masked = {**body, "header": "X-Key: ****"}
            assert (await client.put("/v1/agents/support/webhook", json=masked)).status_code == 200

        async with anyio.create_task_group() as tg:
            tg.start_soon(put)
            tg.start_soon(rotate)
        stored = await pipeline.engine.get_settings("support")
        assert stored.signing_secret == rotated[0]


async def test_logs_name_the_event_but_never_a_secret_or_header_value(
    make_store: StoreFactory, receiver: Receiver
) -> None:
    answers = iter([Reply(500), Reply(200)])
    receiver.behaviour = lambda r: next(answers)
    with capture_logs() as logs:
        async with DeliveryEngine(make_store(), config()) as engine:
            await engine.save_settings(AGENT.id, settings(receiver.url))
            reply(pipeline(engine))
            await wait_until_status(engine, "succeeded")
            await engine.rotate_secret(AGENT.id)
    names = [e["event"] for e in logs]
    assert "delivery.retry_scheduled" in names and "delivery.succeeded" in names
    succeeded = next(e for e in logs if e["event"] == "delivery.succeeded")
    assert {"agent_id", "event_type", "webhook_id", "attempt", "status", "duration_ms"} <= set(
        succeeded
    )
    dump = json.dumps(logs, default=str)
    for secret in ("s3cr3t-token-value", SECRET, SECRET.removeprefix("whsec_")):
        assert secret not in dump


def test_a_long_echoed_header_is_redacted_before_it_is_cut() -> None:
    """A receiver echoing our header among more than the log keeps: the
    secret is redacted whole, never cut first and then missed."""
    from webhook_plugin.delivery.attempt import _headers_json
    from webhook_plugin.delivery.client import Response

    token = "Bearer " + "s3cr3t" * 60  # longer than the 200 characters a value keeps
    settings = WebhookSettings.validated(
        url="https://hooks.example.com/", header=f"Authorization: {token}", signing_secret=SECRET
    )
    headers = {"x-echo-authorization": token}  # first: kept, and cut at 200
    headers.update({f"x-filler-{i}": "y" * 150 for i in range(20)})
    kept = _headers_json(Response(200, headers, b""), settings)
    assert "x-echo-authorization" in kept
    assert "s3cr3t" not in kept and len(kept) <= 2048


@hyp_settings(max_examples=300, deadline=None)
@given(
    value=st.text(alphabet='ab"\\-_/', min_size=4, max_size=24).filter(lambda v: v.strip() == v),
    escaped=st.booleans(),
    prefix=st.text(alphabet="xyz ", max_size=10),
)
def test_stored_headers_are_redacted_as_each_value_would_be(
    value: str, escaped: bool, prefix: str
) -> None:
    """Whatever characters our header's value holds (visible ASCII, as a
    header's must), and whether the receiver
    echoes it as it is or JSON-escaped, the headers stored for an attempt say
    what redacting each value on its own says (the quick path that skips
    answers holding no secret must not skip one that does)."""
    from webhook_plugin.delivery.attempt import _headers_json
    from webhook_plugin.delivery.client import Response
    from webhook_plugin.delivery.redaction import redact, secrets_of

    conf = WebhookSettings(url="https://hooks.example.com/", header=f"X-Key: {value}")
    echoed = prefix + (json.dumps(value, ensure_ascii=False)[1:-1] if escaped else value)
    kept = json.loads(_headers_json(Response(200, {"x-echo": echoed}, b""), conf))
    assert kept == {"x-echo": redact(echoed, secrets_of(conf))}
