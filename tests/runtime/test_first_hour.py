"""The owner's first hour, black box: a receiver on the owner's own machine works
on the first try with `make run` (no token, loopback), and the first save
shows the signing secret that signs its test request and every webhook."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from receiver import Receiver
from servers import Server

pytestmark = pytest.mark.slow

TOKEN = "first-hour-token-0123456789"


def config(tmp: Path, extra: str = "") -> Path:
    path = tmp / "webhook-plugin.toml"
    path.write_text(f'[runtime]\ndatabase = "sqlite:///{tmp / "run.db"}"\n{extra}')
    return path


def test_a_local_receiver_works_on_the_first_try_and_the_first_secret_verifies(
    tmp_path: Path,
) -> None:
    with Receiver() as rx:
        server = Server(config(tmp_path), tmp_path)  # as `make run` serves: no token, loopback
        try:
            with httpx.Client(base_url=server.url, timeout=15) as api:
                page = api.get("/agents/support/settings/webhook").text
                assert "A receiver on this machine" in page  # the page says so
                r = api.put("/v1/agents/support/webhook?test=true", json={"url": f"{rx.url}/hook"})
                assert r.status_code == 200, r.text
                secret = r.json()["signingSecret"]
                assert secret.startswith("whsec_") and r.json()["test"]["status"] == "ok"
                [test] = rx.wait_for(1)
                assert Webhook(secret).verify(test.body, test.headers)["eventType"] == (
                    "WEBHOOK_TEST"
                )
                again = api.put("/v1/agents/support/webhook", json={"url": f"{rx.url}/hook"})
                assert "signingSecret" not in again.json()  # shown once
                assert secret not in api.get("/v1/agents/support/webhook").text
                r = api.post(
                    "/v1/agents/support/messages",
                    json={"conversationId": "c1", "channel": "web", "text": "hello"},
                )
                assert r.status_code == 200, r.text
            deadline = time.monotonic() + 15
            while len(rx.requests) < 2:  # delivered by serve's worker process too
                assert time.monotonic() < deadline, "the webhook never came"
                time.sleep(0.05)
            hook = rx.requests[-1]
            assert Webhook(secret).verify(hook.body, hook.headers)["userMessage"] == "hello"
        finally:
            server.stop()


@pytest.mark.parametrize(
    "extra",
    [f'api_token = "{TOKEN}"\n', "[webhook]\nallow_private_hosts = []\n"],
    ids=["with a token", "an explicit empty list"],
)
def test_a_local_receiver_is_refused_otherwise_and_the_refusal_says_where_to_allow_it(
    tmp_path: Path, extra: str
) -> None:
    with Receiver() as rx:
        server = Server(config(tmp_path, extra), tmp_path)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"} if "token" in extra else {}
            r = httpx.put(
                f"{server.url}/v1/agents/support/webhook",
                json={"url": f"{rx.url}/hook"},
                headers=headers,
                timeout=15,
            )
            assert r.status_code == 400, r.text
            message = r.json()["error"]["message"]
            assert "[webhook]" in message and "--config" in message
            assert "private or loopback" in message
            if not headers:  # (with a token the page needs a sign-in)
                page = httpx.get(f"{server.url}/agents/support/settings/webhook", timeout=15)
                assert page.status_code == 200 and "A receiver on this machine" not in page.text
        finally:
            server.stop()
