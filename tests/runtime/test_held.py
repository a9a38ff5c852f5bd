"""Nothing thrown away: a disabled endpoint's events are held, and sent (or
discarded) when its owner enables it again; a failed range can be recovered.
Black-box, through the API of a running server, on both stores."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from receiver import Receiver, Recorded, Reply
from servers import Server


def gone_until_told() -> tuple[dict[str, bool], object]:
    """A receiver's behaviour: 410 Gone until ``state["gone"]`` is False."""
    state = {"gone": True}

    def behaviour(r: Recorded) -> Reply:
        return Reply(410) if state["gone"] else Reply(200)

    return state, behaviour


def wait_for(predicate: object, timeout: float = 15.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def deliveries(api: httpx.Client, agent: str, **query: str) -> list[dict]:
    r = api.get(f"/v1/agents/{agent}/webhook/deliveries", params={"limit": "1000", **query})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("held_events", ["send", "discard"])
def test_a_disabled_endpoints_events_are_held_then_sent_in_order_or_discarded(
    env: tuple[Server, Receiver, Path], api: httpx.Client, held_events: str
) -> None:
    agent = f"held-{held_events}"
    state, behaviour = gone_until_told()
    with Receiver(behaviour) as rx:  # type: ignore[arg-type]
        url = rx.url + "/h"
        put = api.put(f"/v1/agents/{agent}/webhook", json={"url": url, "ordering": "conversation"})
        assert put.status_code == 200, put.text
        secret = put.json()["signingSecret"]
        # the first event gets 410 Gone: the endpoint is disabled
        first = api.post(
            f"/v1/agents/{agent}/messages",
            json={"conversationId": f"{agent}-c", "channel": "web", "text": "first"},
        ).json()
        wait_for(lambda: api.get(f"/v1/agents/{agent}/webhook").json()["disabled"])
        queued = [e["webhookId"] for e in first["events"]]
        for i in range(50):
            r = api.post(
                f"/v1/agents/{agent}/messages",
                json={"conversationId": f"{agent}-c", "channel": "web", "text": f"m{i}"},
            )
            assert r.status_code == 200, r.text
            events = r.json()["events"]
            assert events, "a disabled endpoint's events are queued, not dropped"
            queued += [e["webhookId"] for e in events]
        held = deliveries(api, agent, status="held")
        assert {d["webhookId"] for d in held} == set(queued)
        assert all(d["lastError"].startswith("endpoint_disabled") for d in held[:-1])
        sent_while_disabled = len(rx.requests)
        assert sent_while_disabled == 1  # the one answered 410; nothing since

        state["gone"] = False
        again = api.put(
            f"/v1/agents/{agent}/webhook",
            json={"url": url, "ordering": "conversation", "heldEvents": held_events},
        )
        assert again.status_code == 200 and again.json()["disabled"] is False
        if held_events == "discard":
            # decided in the saving transaction: none is left to be sent
            failed = deliveries(api, agent, status="failed")
            assert {d["webhookId"] for d in failed} == set(queued)
            assert all(d["lastError"].startswith("discarded") for d in failed)
            assert deliveries(api, agent, status="pending") == []
            assert deliveries(api, agent, status="held") == []
            return
        wait_for(lambda: len(deliveries(api, agent, status="succeeded")) == len(queued))
    later = rx.requests[sent_while_disabled:]
    # each once, in the order they were created, signed with the agent's secret
    assert [r.headers["webhook-id"] for r in later] == queued
    for r in later:
        Webhook(secret).verify(r.body, r.headers)
    assert [json.loads(r.body)["sequence"] for r in later] == list(range(1, len(queued) + 1))


def test_recover_queues_a_failed_range_once_even_when_asked_twice(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    agent = "recovering"
    answers = {"status": 503}
    with Receiver(lambda r: Reply(answers["status"])) as rx:
        url = rx.url + "/r"
        assert api.put(f"/v1/agents/{agent}/webhook", json={"url": url}).status_code == 200
        before = datetime.now(UTC)
        ids = []
        for i in range(20):
            r = api.post(
                f"/v1/agents/{agent}/messages",
                json={"conversationId": f"rc-{i % 4}", "channel": "web", "text": f"m{i}"},
            )
            ids += [e["webhookId"] for e in r.json()["events"]]
        # three attempts each (the test config's schedule), then failed for good
        wait_for(lambda: len(deliveries(api, agent, status="failed")) == len(ids))
        tried = len(rx.requests)
        answers["status"] = 200
        body = {"since": before.isoformat(), "until": (datetime.now(UTC)).isoformat()}
        first = api.post(f"/v1/agents/{agent}/webhook/recover", json=body)
        second = api.post(f"/v1/agents/{agent}/webhook/recover", json=body)
        assert first.status_code == 200 and first.json() == {"queued": len(ids)}
        assert second.json() == {"queued": 0}  # all pending already: none twice
        wait_for(lambda: len(deliveries(api, agent, status="succeeded")) == len(ids))
        one = deliveries(api, agent, status="succeeded")[0]["id"]
        log = api.get(f"/v1/agents/{agent}/webhook/deliveries/{one}").json()["attemptLog"]
        assert [a["trigger"] for a in log] == ["scheduled"] * 3 + ["recovery"]
        # a range before the events holds none of them
        old = {"since": (before - timedelta(hours=2)).isoformat(), "until": before.isoformat()}
        assert api.post(f"/v1/agents/{agent}/webhook/recover", json=old).json() == {"queued": 0}
    delivered = [r.headers["webhook-id"] for r in rx.requests[tried:]]
    assert sorted(delivered) == sorted(ids)  # each once


def test_recover_and_the_log_filters_refuse_bad_input_clearly(api: httpx.Client) -> None:
    agent = "support"
    path = f"/v1/agents/{agent}/webhook/recover"
    no_zone = api.post(path, json={"since": "2026-12-01T08:00:00"})
    assert no_zone.status_code == 400 and "offset from UTC" in no_zone.json()["error"]["message"]
    backwards = api.post(
        path, json={"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}
    )
    assert backwards.status_code == 400 and "later than since" in backwards.text
    unknown = api.post(path, json={"since": "2026-12-01T00:00:00Z", "eventTypes": ["NOPE"]})
    assert unknown.status_code == 400
    log = f"/v1/agents/{agent}/webhook/deliveries"
    assert api.get(log, params={"status": "lost"}).status_code == 400
    assert api.get(log, params={"eventType": "NOPE"}).status_code == 400
    assert api.get(log, params={"since": "yesterday"}).status_code == 400
    assert api.get(log, params={"cursor": "-1"}).status_code == 400
