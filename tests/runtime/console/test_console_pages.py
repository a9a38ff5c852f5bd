"""The console's pages in-process (httpx against the real app): what each page
shows and what each form does, through the same APIs as ``/v1``."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from console_client import BEARER, csrf_of, post_form, running_console, sign_in
from helpers import closed_port_url, wait_until
from receiver import Receiver, Recorded, Reply
from webhook_plugin.events import WebhookEventType

pytestmark = pytest.mark.anyio

TAB = "/agents/support/settings/webhook"
SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]{16,}")


def status_text(html: str) -> str:
    match = re.search(r'role="status">(.*?)</div>', html, re.DOTALL)
    assert match, "no status region"
    return match[1].strip()


def field_error(html: str, field_id: str) -> str | None:
    match = re.search(rf'<p class="field-error" id="{field_id}-error">(.*?)</p>', html, re.DOTALL)
    return None if match is None else re.sub(r"<[^>]+>", "", match[1]).strip()


def input_value(html: str, field_id: str) -> str:
    match = re.search(rf'<input id="{field_id}"[^>]*value="([^"]*)"', html)
    assert match, field_id
    return match[1]


async def save(client: httpx.AsyncClient, **fields: object) -> httpx.Response:
    data: dict[str, object] = {
        "url": "",
        "header": "",
        "user_info_url": "",
        "user_info_header": "",
        "events": [str(e) for e in WebhookEventType],
        **fields,
    }
    return await post_form(client, TAB, TAB, data)


async def test_the_webhook_tab_saves_tests_and_says_what_it_found(tmp_path: Path) -> None:
    with Receiver(lambda r: Reply(204, body=b"")) as rx:
        async with running_console(tmp_path) as client:
            await sign_in(client)
            page = await client.get(TAB)
            assert "<h1>WebHook</h1>" in page.text and "a new agent" in page.text
            r = await save(
                client,
                url=f"{rx.url}/hook",
                header="X-Hook-Auth: first-value",
                user_info_url=f"{rx.url}/lookup",
                events=["AGENT_USER_MESSAGE", "AGENT_MESSAGE_SENDED"],
            )
            # the first save made the agent's signing secret: shown in its answer,
            # once, and the test request is signed with it
            assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
            said = status_text(r.text)
            assert said.startswith("Saved.") and "reachable: HTTP 204" in said
            [secret] = set(SECRET.findall(r.text))
            test = rx.wait_for(1)[0]
            assert test.headers["x-hook-auth"] == "first-value"
            assert b'"eventType":"WEBHOOK_TEST"' in test.body
            Webhook(secret).verify(test.body, test.headers)
            page = await client.get(TAB)
            # the stored header comes back masked, the filter as checkboxes
            assert input_value(page.text, "webhook-header") == "X-Hook-Auth: ****"
            assert "first-value" not in page.text and not SECRET.search(page.text)
            checked = set(re.findall(r'value="([A-Z_]+)" checked', page.text))
            assert checked == {"AGENT_USER_MESSAGE", "AGENT_MESSAGE_SENDED"}
            assert status_text((await client.get(TAB)).text) == ""  # said once

            # the masked header saved back keeps the stored value
            r = await save(client, url=f"{rx.url}/hook", header="X-Hook-Auth: ****")
            assert r.status_code == 303
            assert rx.wait_for(2)[1].headers["x-hook-auth"] == "first-value"
            api = (await client.get("/v1/agents/support/webhook", headers=BEARER)).json()
            assert api["events"] is None  # all checked: no filter
            assert api["header"] == "X-Hook-Auth: ****" and api["userInfoUrl"] is None

            # a masked header is not carried to another origin
            r = await save(client, url="http://127.0.0.1:1/other", header="X-Hook-Auth: ****")
            assert r.status_code == 400
            assert "another host" in (field_error(r.text, "webhook-header") or "")


async def test_invalid_input_keeps_what_was_typed_and_says_why_next_to_each_field(
    tmp_path: Path,
) -> None:
    async with running_console(tmp_path) as client:
        await sign_in(client)
        r = await save(
            client,
            url="ftp://files.example.com/in",
            header="no colon here",
            user_info_url="http://10.0.0.8/lookup",
            user_info_header="Host: evil",
            events=[],
        )
        assert r.status_code == 400
        assert 'role="alert"' in r.text and "were not saved" in r.text
        assert "http:// or https://" in (field_error(r.text, "webhook-url") or "")
        assert "Name: value" in (field_error(r.text, "webhook-header") or "")
        assert field_error(r.text, "user-info-url")  # a private address, refused by the guard
        assert "set by webhook-plugin" in (field_error(r.text, "user-info-header") or "")
        assert "at least one event type" in (field_error(r.text, "events") or "")
        assert input_value(r.text, "webhook-url") == "ftp://files.example.com/in"
        assert input_value(r.text, "webhook-header") == "no colon here"
        assert input_value(r.text, "user-info-url") == "http://10.0.0.8/lookup"
        assert 'aria-invalid="true"' in r.text
        assert (await client.get("/v1/agents/support/webhook", headers=BEARER)).status_code == 404


async def test_an_unreachable_endpoint_is_saved_and_reported(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        await sign_in(client)
        url = closed_port_url()
        r = await save(client, url=url)
        assert r.status_code == 200  # the agent's first secret is shown in the answer
        said = status_text(r.text)
        assert said.startswith("Saved.") and "unreachable" in said and "connect" in said
        api = (await client.get("/v1/agents/support/webhook", headers=BEARER)).json()
        assert api["url"] == url


async def test_rotate_shows_the_new_secret_once_with_verification_snippets(
    tmp_path: Path,
) -> None:
    async def rotate(nonce: str | None = None) -> tuple[httpx.Response, str]:
        page = (await client.get(TAB)).text
        nonce = nonce or re.search(r'name="rotation" value="([^"]+)"', page)[1]  # type: ignore[index]
        answer = await client.post(
            f"{TAB}/rotate-secret",
            data={"csrf": csrf_of(page), "rotation": nonce, "confirm": "on", "grace": "0"},
        )
        return answer, nonce

    async with running_console(tmp_path) as client:
        await sign_in(client)
        r, _ = await rotate()
        assert r.status_code == 303  # nothing to rotate yet
        assert "save them first" in status_text((await client.get(TAB)).text)
        await save(client, url="http://127.0.0.1:1/x")
        r, nonce = await rotate()
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        secrets = SECRET.findall(r.text)
        assert len(set(secrets)) == 1
        assert "not shown again" in status_text(r.text)
        assert "from standardwebhooks.webhooks import Webhook" in r.text
        assert 'import { Webhook } from "standardwebhooks"' in r.text
        assert not SECRET.search((await client.get(TAB)).text)
        # the same form sent again (a reload) neither rotates nor shows a secret
        again, _ = await rotate(nonce)
        assert again.status_code == 200 and not SECRET.search(again.text)
        assert "already rotated" in status_text(again.text)


async def test_the_agents_page_lists_and_opens_agents(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        await client.post(
            "/v1/agents/shop-bot/messages",
            json={"conversationId": "c", "channel": "web", "text": "hi"},
            headers=BEARER,
        )
        await sign_in(client)
        page = await client.get("/agents")
        assert '<a href="/agents/shop-bot/settings/webhook">shop-bot</a>' in page.text
        r = await client.get("/agents/open", params={"agentId": "new bot"})
        assert r.headers["location"] == "/agents/new%20bot/settings/webhook"
        r = await client.get("/agents/open", params={"agentId": ""})
        assert r.status_code == 400 and 'id="agent-id-error"' in r.text
        page = await client.get(r"/agents/new%20bot/settings/webhook")
        assert page.status_code == 200 and "a new agent" in page.text


async def test_the_inbox_lists_newest_first_and_unknown_pages_are_404(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        for conv, name in (("c-old", "Old Contact"), ("c-new", "New Contact")):
            await client.post(
                "/v1/agents/support/messages",
                json={"conversationId": conv, "channel": "web", "text": f"hi from {name}",
                      "contact": {"name": name}},
                headers=BEARER,
            )  # fmt: skip
        await sign_in(client)
        inbox = (await client.get("/inbox")).text
        assert inbox.index("New Contact") < inbox.index("Old Contact")
        await post_form(client, "/inbox/c-old", "/inbox/c-old/messages", {"text": "answer"})
        inbox = (await client.get("/inbox")).text
        assert inbox.index("Old Contact") < inbox.index("New Contact")
        assert 'href="/inbox/c-old"' in inbox
        for path in ("/inbox/nope", "/agents/nope/deliveries", "/agents/support/deliveries/99"):
            r = await client.get(path)
            assert r.status_code == 404 and "Not found" in r.text, path


async def test_the_conversation_page_shows_user_info_within_its_time_box(
    tmp_path: Path,
) -> None:
    def crm(r: Recorded) -> Reply:
        if r.path == "/slow":
            return Reply(200, body=b'{"plan": "late"}', delay=2.0)
        if r.path == "/broken":
            return Reply(500, body=b"down")
        return Reply(200, body=b'{"plan": "gold", "since": 2021, "tags": ["vip"]}')

    with Receiver(crm) as rx:
        async with running_console(tmp_path) as client:
            await client.post(
                "/v1/agents/support/messages",
                json={"conversationId": "c1", "channel": "web", "text": "hi",
                      "contact": {"name": "Ana", "email": "ana@example.com"}},
                headers=BEARER,
            )  # fmt: skip
            await sign_in(client)
            page = (await client.get("/inbox/c1")).text
            assert "Not configured" in page and "Ana" in page and "ana@example.com" in page
            for path, expect in (("/ok", "gold"), ("/broken", "Error"), ("/slow", "Timeout")):
                await client.put(
                    "/v1/agents/support/webhook",
                    json={"userInfoUrl": f"{rx.url}{path}"},
                    headers=BEARER,
                )
                started = time.monotonic()
                page = (await client.get("/inbox/c1")).text
                took = time.monotonic() - started
                region = page[page.index('id="userinfo-h"') : page.index('id="contact-h"')]
                assert expect in region, (path, region)
                assert took < 0.5 + 0.5 + 0.7, (path, took)  # the user-info timeout bounds it


async def test_the_operators_message_is_sent_blocked_or_noted(tmp_path: Path) -> None:
    old = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    async with running_console(tmp_path) as client:
        for conv, channel, created in (
            ("c-web", "web", None), ("c-wa", "whatsapp", old), ("c-api", "api", None),
        ):  # fmt: skip
            body = {"conversationId": conv, "channel": channel, "text": "hi"}
            if created:
                body["createdAt"] = created
            r = await client.post("/v1/agents/support/messages", json=body, headers=BEARER)
            assert r.status_code == 200, r.text
        await sign_in(client)
        for conv, said, mark in (
            ("c-web", "Sent.", None),
            ("c-wa", "Blocked: whatsapp refuses messages more than 24 h", "Blocked"),
            ("c-api", "Noted: the api channel cannot carry agent messages", "Noted"),
        ):
            page = f"/inbox/{conv}"
            before = (await client.get(page)).text
            if mark:
                assert (
                    "the channel will block it" if mark == "Blocked" else "kept as a note"
                ) in before
            r = await post_form(client, page, f"{page}/messages", {"text": "from the operator"})
            assert r.status_code == 303
            after = (await client.get(page)).text
            assert status_text(after).startswith(said), (conv, status_text(after))
            assert "from the operator" in after
            if mark:
                assert (
                    f'<span class="badge {"bad" if mark == "Blocked" else "warn"}">{mark}</span>'
                    in after
                )
        r = await post_form(client, "/inbox/c-web", "/inbox/c-web/messages", {"text": "  "})
        assert "Type a message first" in status_text((await client.get("/inbox/c-web")).text)


async def test_the_ai_switch_turns_the_ai_off_and_on(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        await client.post(
            "/v1/agents/support/messages",
            json={"conversationId": "c1", "channel": "web", "text": "hi"},
            headers=BEARER,
        )
        await sign_in(client)
        page = (await client.get("/inbox/c1")).text
        assert 'role="switch" aria-checked="true"' in page
        r = await client.post("/inbox/c1/ai", data={"csrf": csrf_of(page), "ai_enabled": "off"})
        assert r.status_code == 303
        page = (await client.get("/inbox/c1")).text
        assert 'role="switch" aria-checked="false"' in page and "AI disabled" in page
        view = (await client.get("/v1/inbox/conversations/c1", headers=BEARER)).json()
        assert view["aiEnabled"] is False


async def test_the_delivery_log_filters_opens_attempts_and_redelivers(tmp_path: Path) -> None:
    answers = {"status": 500}
    with Receiver(lambda r: Reply(answers["status"], body=b"receiver says <b>no</b>")) as rx:
        async with running_console(tmp_path) as client:
            await client.put(
                "/v1/agents/support/webhook", json={"url": f"{rx.url}/hook"}, headers=BEARER
            )
            for i in range(2):
                await client.post(
                    "/v1/agents/support/messages",
                    json={"conversationId": f"c{i}", "channel": "web", "text": "hi"},
                    headers=BEARER,
                )

            async def failed(status: str = "failed") -> list[dict[str, object]]:
                r = await client.get(
                    f"/v1/agents/support/webhook/deliveries?status={status}", headers=BEARER
                )
                return r.json()  # type: ignore[no-any-return]

            with anyio.fail_after(10):
                while len(await failed()) < 2:
                    await anyio.sleep(0.05)
            await sign_in(client)
            log = "/agents/support/deliveries"
            page = (await client.get(log)).text
            for header in ("Event type", "Status", "Attempts", "Last status code", "Last error",
                           "Created", "Next attempt"):  # fmt: skip
                assert f">{header}" in page
            assert page.count(">Redeliver</button>") == 2 and "Redeliver all failed" in page
            assert "0.0 % succeeded" in page and "<svg" in page  # the health strip
            assert (await client.get(log, params={"status": "succeeded"})).text.count(
                ">Redeliver</button>"
            ) == 0
            first = (await failed())[0]["id"]
            detail = (await client.get(f"{log}/{first}")).text
            assert "receiver says &lt;b&gt;no&lt;/b&gt;" in detail and ">500<" in detail

            answers["status"] = 200
            r = await post_form(client, log, f"{log}/{first}/redeliver", {})
            assert r.status_code == 303
            assert "queued again" in status_text((await client.get(log)).text)
            await wait_until(lambda: len(rx.requests) >= 5)
            # asked first, with how many: nothing is queued until confirmed
            asked = await post_form(client, log, f"{log}/redeliver-failed", {})
            assert asked.status_code == 200 and "Send 1 delivery again?" in asked.text
            assert len(await failed()) == 1
            r = await client.post(
                f"{log}/redeliver-failed", data={"csrf": csrf_of(asked.text), "confirm": "yes"}
            )
            assert "1 failed delivery is queued again" in status_text((await client.get(log)).text)
            with anyio.fail_after(10):
                while len(await failed("succeeded")) < 2:
                    await anyio.sleep(0.05)
            ids = [req.headers["webhook-id"] for req in rx.requests]
            assert len(set(ids)) == 2  # redelivered with the same webhook-id
            page = (await client.get(log)).text
            assert "% succeeded" in page and "0.0 % succeeded" not in page


async def test_the_log_filters_and_recover_asks_before_it_sends(tmp_path: Path) -> None:
    answers = {"status": 503}
    with Receiver(lambda r: Reply(answers["status"])) as rx:
        async with running_console(tmp_path) as client:
            await client.put(
                "/v1/agents/support/webhook", json={"url": f"{rx.url}/hook"}, headers=BEARER
            )
            start = datetime.now(UTC) - timedelta(minutes=1)
            for i in range(3):
                await client.post(
                    "/v1/agents/support/messages",
                    json={"conversationId": f"f{i}", "channel": "web", "text": "hi"},
                    headers=BEARER,
                )

            async def count(status: str) -> int:
                r = await client.get(
                    f"/v1/agents/support/webhook/deliveries?status={status}", headers=BEARER
                )
                return len(r.json())

            with anyio.fail_after(10):
                while await count("failed") < 3:
                    await anyio.sleep(0.05)
            await sign_in(client)
            log = "/agents/support/deliveries"
            one = (await client.get(log, params={"conversation_id": "f1"})).text
            assert one.count(">Redeliver</button>") == 1 and " · f1 #1" in one
            none = (await client.get(log, params={"event_type": "USER_MESSAGE_RECEIVED"})).text
            assert ">Redeliver</button>" not in none and "match the filters" in none
            since = start.strftime("%Y-%m-%dT%H:%M:%S")
            asked = await post_form(client, log, f"{log}/recover", {"since": since})
            assert asked.status_code == 200 and "Send 3 deliveries again?" in asked.text
            assert await count("failed") == 3  # nothing sent before it is confirmed
            answers["status"] = 200
            done = await client.post(
                f"{log}/recover",
                data={"csrf": csrf_of(asked.text), "confirm": "yes", "since": since},
            )
            assert done.status_code == 303
            notice = status_text((await client.get(log)).text)
            assert "3 deliveries are queued again, oldest first" in notice
            with anyio.fail_after(10):
                while await count("succeeded") < 3:
                    await anyio.sleep(0.05)


async def test_a_group_conversation_shows_its_group_name(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        for name in ("Clientes", "Clientes VIP"):  # renamed: the latest name shows
            r = await client.post(
                "/v1/agents/support/messages",
                json={
                    "conversationId": "grp-1",
                    "channel": "zapi",
                    "text": "oi, grupo",
                    "contact": {"name": "Bia"},
                    "group": {"id": "120363@g.us", "name": name, "mentioned": False},
                },
                headers=BEARER,
            )
            assert r.status_code == 200, r.text
        view = (await client.get("/v1/inbox/conversations/grp-1", headers=BEARER)).json()
        assert view["groupName"] == "Clientes VIP"
        await sign_in(client)
        inbox = (await client.get("/inbox")).text
        assert ">Clientes VIP</a>" in inbox
        page = (await client.get("/inbox/grp-1")).text
        assert "<h1>Clientes VIP</h1>" in page
        assert "Sent to the group Clientes VIP on zapi" in page
        # and links to its deliveries, which the log lists by conversation
        assert 'href="/agents/support/deliveries?conversation_id=grp-1"' in page
        log = await client.get("/agents/support/deliveries?conversation_id=grp-1")
        assert log.status_code == 200 and 'value="grp-1"' in log.text


async def test_send_example_event_is_a_real_logged_delivery(tmp_path: Path) -> None:
    with Receiver(lambda r: Reply(200)) as rx:
        async with running_console(tmp_path) as client:
            await client.put(
                "/v1/agents/support/webhook",
                json={"url": f"{rx.url}/hook", "events": ["AGENT_USER_MESSAGE"]},
                headers=BEARER,
            )
            await sign_in(client)
            tab = "/agents/support/settings/webhook"
            r = await post_form(
                client, tab, f"{tab}/example", {"event_type": "GROUP_MESSAGE_RECEIVED"}
            )
            assert r.status_code == 303 and "webhook_id=" in r.headers["location"]
            await wait_until(lambda: len(rx.requests) >= 1)
            [got] = rx.requests
            body = json.loads(got.body)
            # sent though the filter leaves that type out: the owner asked for it
            assert body["eventType"] == "GROUP_MESSAGE_RECEIVED"
            assert body["conversationId"] == "example" and body["groupName"] == "Example Group"
            assert body["sequence"] >= 1
            log = (await client.get(r.headers["location"])).text
            assert log.count(">Redeliver</button>") == 1 and "GROUP_MESSAGE_RECEIVED" in log


async def test_a_tampered_ordering_field_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    async with running_console(tmp_path) as client:
        await sign_in(client)
        tab = "/agents/support/settings/webhook"
        r = await post_form(
            client, tab, tab, {"url": "", "events": "AGENT_USER_MESSAGE", "ordering": "fifo"}
        )
        assert r.status_code == 400
        assert "Order: must be one of none, conversation" in r.text


async def test_unicode_digits_in_a_cursor_are_no_number_and_no_crash(tmp_path: Path) -> None:
    """``"²".isdigit()`` is true, and ``int("²")`` raises: a cursor or a
    sequence in such digits is read as none, never a server error."""
    async with running_console(tmp_path) as client:
        await sign_in(client)
        assert (await client.get("/inbox", params={"before": "²:x"})).status_code == 200
        missing = await client.get("/inbox-events/no-such-conversation", params={"seq": "²"})
        assert missing.status_code == 404
