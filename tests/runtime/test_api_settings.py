"""An agent's webhook through the /v1 API of a running server: its settings, secret
rotation, the delivery log and redelivery, and the metrics."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from standardwebhooks.webhooks import Webhook

from helpers import closed_port_url
from receiver import Receiver
from servers import AUTH, Server, hooks_for, post_message, write_config


def test_settings_are_masked_and_the_secret_never_shown(api: httpx.Client) -> None:
    settings = api.get("/v1/agents/support/webhook").json()
    assert settings["header"] == "Authorization: ****"
    assert settings["userInfoHeader"] == "X-Api-Key: ****"
    text = json.dumps(settings)
    assert "receiver-secret-value" not in text and "whsec_" not in text


def test_put_replaces_settings_and_a_masked_header_round_trips(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    rx = env[1]
    current = api.get("/v1/agents/new-agent/webhook")
    assert current.status_code == 404
    put = api.put(
        "/v1/agents/new-agent/webhook",
        json={
            "url": rx.url + "/hook",
            "header": "X-Token: abc123",
            "events": ["AGENT_USER_MESSAGE"],
        },
    )
    assert put.status_code == 200 and put.json()["header"] == "X-Token: ****"
    # GET + PUT back, as a settings form would: the stored header value is kept
    again = api.put(
        "/v1/agents/new-agent/webhook",
        json={k: put.json()[k] for k in ("url", "header", "events")},
    )
    assert again.status_code == 200
    r = api.post(
        "/v1/agents/new-agent/messages",
        json={"conversationId": "na-1", "channel": "web", "text": "hi"},
    )
    [hook] = hooks_for(rx, r.json()["events"][0]["webhookId"])
    assert hook.headers["x-token"] == "abc123"


def test_saving_settings_with_test_true_reports_the_test_request(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    rx = env[1]
    r = api.put(
        "/v1/agents/tester/webhook?test=true",
        json={"url": rx.url + "/tested", "header": "X-Token: tester-token"},
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["test"]["status"] == "ok" and answer["test"]["statusCode"] == 204
    assert answer["header"] == "X-Token: ****" and "tester-token" not in r.text
    [got] = [q for q in rx.requests if q.path == "/tested"]
    assert got.headers["x-token"] == "tester-token"
    assert json.loads(got.body)["eventType"] == "WEBHOOK_TEST"
    assert api.get("/v1/agents/tester/webhook/deliveries").json() == []  # never queued
    # an unreachable URL is saved all the same (as ChatVolt does), and said to be so
    closed = closed_port_url()
    r = api.put("/v1/agents/tester/webhook?test=true", json={"url": closed})
    assert r.json()["url"] == closed
    assert r.json()["test"]["status"] == "unreachable"
    assert r.json()["test"]["error"].startswith("connect_error:")
    # without a URL there is nothing to test
    assert api.put("/v1/agents/tester/webhook?test=true", json={}).json()["test"] is None
    assert "test" not in api.put("/v1/agents/tester/webhook", json={}).json()


def test_rotate_secret_then_later_events_use_it(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    api.put("/v1/agents/rotator/webhook", json={"url": env[1].url + "/hook"})
    r = api.post("/v1/agents/rotator/webhook/rotate-secret?graceSeconds=0")
    secret = r.json()["signingSecret"]
    assert secret.startswith("whsec_")
    assert r.json()["previousSecretExpiresAt"] is None  # on request, the old one is gone
    # by default the old secret keeps signing (a second signature) for 24 hours
    r = api.post("/v1/agents/rotator/webhook/rotate-secret")
    until = datetime.fromisoformat(r.json()["previousSecretExpiresAt"])
    assert abs((until - datetime.now(UTC)).total_seconds() - 86400) < 60
    secret = r.json()["signingSecret"]
    assert "whsec_" not in api.get("/v1/agents/rotator/webhook").text
    out = api.post(
        "/v1/agents/rotator/messages",
        json={"conversationId": "rot-1", "channel": "web", "text": "hi"},
    )
    [hook] = hooks_for(env[1], out.json()["events"][0]["webhookId"])
    Webhook(secret).verify(hook.body, hook.headers)


def test_saved_settings_win_over_the_config_and_survive_restart(tmp_path: Path) -> None:
    with Receiver() as rx, Receiver() as other:
        config = write_config(tmp_path, rx.url)
        server = Server(config, tmp_path)
        try:
            with httpx.Client(base_url=server.url, headers=AUTH) as api:
                assert (
                    api.put(
                        "/v1/agents/support/webhook", json={"url": other.url + "/moved"}
                    ).status_code
                    == 200
                )
        finally:
            server.stop()
        server = Server(config, tmp_path)
        try:
            with httpx.Client(base_url=server.url, headers=AUTH) as api:
                assert api.get("/v1/agents/support/webhook").json()["url"] == other.url + "/moved"
                out = post_message(api, "after-restart")
                other.wait_for(1)
                assert rx.requests == []
                assert out["events"]
        finally:
            server.stop()


def test_delivery_log_and_redelivery(env: tuple[Server, Receiver, Path], api: httpx.Client) -> None:
    rx = env[1]
    out = post_message(api, "log-1")
    webhook_id = out["events"][0]["webhookId"]
    hooks_for(rx, webhook_id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = api.get(
            "/v1/agents/support/webhook/deliveries", params={"status": "succeeded"}
        ).json()
        row = next((d for d in rows if d["webhookId"] == webhook_id), None)
        if row:
            break
        time.sleep(0.05)
    assert row is not None
    assert set(row) == {
        "id",
        "webhookId",
        "eventType",
        "conversationId",
        "sequence",
        "status",
        "attempts",
        "lastStatusCode",
        "lastError",
        "createdAt",
        "nextAttemptAt",
    }
    assert row["sequence"] >= 1 and isinstance(row["conversationId"], str)
    assert row["attempts"] == 1 and row["lastStatusCode"] == 204 and row["nextAttemptAt"] is None
    r = api.post(f"/v1/agents/support/webhook/deliveries/{row['id']}/redeliver")
    assert r.status_code == 200 and r.json()["webhookId"] == webhook_id
    deadline = time.monotonic() + 10
    while len([x for x in rx.requests if x.headers.get("webhook-id") == webhook_id]) < 2:
        assert time.monotonic() < deadline, "redelivery never arrived"
        time.sleep(0.02)
    detail = api.get(f"/v1/agents/support/webhook/deliveries/{row['id']}").json()
    assert [a["statusCode"] for a in detail["attemptLog"]] == [204, 204]


def test_metrics_need_the_token_and_count_the_events(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    assert httpx.get(f"{env[0].url}/metrics").status_code == 401
    post_message(api, "metrics-1")
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    queued = [
        line
        for line in r.text.splitlines()
        if line.startswith("webhook_plugin_events_queued_total")
    ]
    assert sum(float(line.rpartition(" ")[2]) for line in queued) >= 1
    assert "# TYPE webhook_plugin_attempt_duration_seconds histogram" in r.text
    assert "webhook_plugin_pending_deliveries " in r.text


def test_a_deliverys_detail_says_where_with_what_and_why_each_attempt_went(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    rx = env[1]
    [event] = post_message(api, "detail-1")["events"]
    [hook] = hooks_for(rx, event["webhookId"])
    [row] = api.get(
        "/v1/agents/support/webhook/deliveries", params={"webhookId": event["webhookId"]}
    ).json()
    path = f"/v1/agents/support/webhook/deliveries/{row['id']}"
    deadline = time.monotonic() + 10
    while not (detail := api.get(path).json())["attemptLog"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [first] = detail["attemptLog"]
    assert first["trigger"] == "scheduled" and first["url"] == rx.url + "/hook"
    sent = dict(first["requestHeaders"])
    assert sent["webhook-id"] == hook.headers["webhook-id"]
    assert sent["webhook-timestamp"] == hook.headers["webhook-timestamp"]
    assert sent["authorization"] == "****" and "receiver-secret-value" not in json.dumps(detail)
    assert first["statusCode"] == 204 and first["responseHeaders"]["content-length"] == "0"
    api.post(f"{path}/redeliver")
    while len((detail := api.get(path).json())["attemptLog"]) < 2:
        assert time.monotonic() < deadline + 10
        time.sleep(0.05)
    assert [a["trigger"] for a in detail["attemptLog"]] == ["scheduled", "manual"]
