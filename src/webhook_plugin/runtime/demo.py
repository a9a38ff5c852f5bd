"""``webhook-plugin demo``: the whole product on loopback, in one command.

Starts a webhook receiver and a user-info endpoint, then the reference
runtime (in a temporary folder), plays a short conversation that produces all
six event types, prints each webhook as it arrives with its signature checked,
and exits.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..delivery.signing import verify
from ..events import WebhookEventType
from ..settings import generate_secret
from .app import create_app
from .config import parse_config

__all__ = ["run_demo"]


def _listen() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _receiver(secret: str, arrived: list[dict[str, Any]], out: Any) -> Starlette:
    async def hook(request: Request) -> Response:
        body = await request.body()
        ok = verify(
            secret,
            request.headers["webhook-id"],
            request.headers["webhook-timestamp"],
            body,
            request.headers["webhook-signature"],
        )
        payload = json.loads(body)
        arrived.append(payload)
        print(
            f"\n<- webhook {len(arrived)}: {payload['eventType']}"
            f"   signature {'valid' if ok else 'INVALID'}   id {request.headers['webhook-id']}",
            file=out,
        )
        print(json.dumps(payload, indent=2, ensure_ascii=False), file=out)
        return Response(status_code=204 if ok else 400)

    async def lookup(request: Request) -> Response:
        data = await request.json()
        contact = data.get("contact", {})
        return JSONResponse(
            {"customerSince": "2021-03-14", "plan": "gold", "name": contact.get("name")}
        )

    return Starlette(
        routes=[Route("/hook", hook, methods=["POST"]), Route("/lookup", lookup, methods=["POST"])]
    )


async def _serve(app: Any, sock: socket.socket, servers: list[uvicorn.Server]) -> None:
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on", access_log=False))
    servers.append(server)
    await server.serve(sockets=[sock])


async def _play(api: str, arrived: list[dict[str, Any]], out: Any, command: str) -> int:
    async with httpx.AsyncClient(base_url=api, timeout=10) as client:

        async def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            response = await client.request(method, path, json=body)
            response.raise_for_status()
            answer = response.json()
            events = ", ".join(e["eventType"] for e in answer.get("events", [])) or "none"
            print(f"\n-> {method} {path}   queued: {events}", file=out)
            return answer

        contact = {"id": "u-1", "name": "Ana Souza", "email": "ana@example.com"}
        # 1. AI on: the agent answers -> AGENT_USER_MESSAGE
        await call(
            "POST",
            "/v1/agents/demo/messages",
            {
                "conversationId": "wa-ana",
                "channel": "whatsapp",
                "text": "Olá!",
                "contact": contact,
            },
        )
        # 2. an operator writes from the Inbox within 24 h -> AGENT_MESSAGE_SENDED
        await call(
            "POST", "/v1/conversations/wa-ana/inbox-messages", {"text": "Hi Ana, Bruno here."}
        )
        # 3. AI off: the user's message alone -> USER_MESSAGE_RECEIVED
        await call("PATCH", "/v1/conversations/wa-ana", {"aiEnabled": False})
        await call(
            "POST",
            "/v1/agents/demo/messages",
            {
                "conversationId": "wa-ana",
                "channel": "whatsapp",
                "text": "Can I change my plan?",
            },
        )
        # 4. WhatsApp, last user message two days ago: blocked -> AGENT_MESSAGE_BLOCKED
        old = (datetime.now(UTC) - timedelta(days=2)).isoformat()
        await call(
            "POST",
            "/v1/agents/demo/messages",
            {
                "conversationId": "wa-old",
                "channel": "whatsapp",
                "text": "hello?",
                "createdAt": old,
            },
        )
        await call(
            "POST", "/v1/conversations/wa-old/inbox-messages", {"text": "Sorry for the delay!"}
        )
        # 5. the API channel cannot carry it: noted -> AGENT_MESSAGE_NOTED
        await call(
            "POST",
            "/v1/agents/demo/messages",
            {
                "conversationId": "api-1",
                "channel": "api",
                "text": "status of order 42?",
            },
        )
        await call("POST", "/v1/conversations/api-1/inbox-messages", {"text": "Shipped today."})
        # 6. a group message that does not mention the agent -> GROUP_MESSAGE_RECEIVED
        await call(
            "POST",
            "/v1/agents/demo/messages",
            {
                "conversationId": "grp-1",
                "channel": "zapi",
                "text": "who is coming on Friday?",
                "group": {"id": "120363@g.us", "name": "Clientes VIP", "mentioned": False},
            },
        )
        # the Inbox, enriched by the user-info endpoint
        inbox = (await client.get("/v1/inbox/conversations/wa-ana")).json()
        print(
            f"\n-> GET /v1/inbox/conversations/wa-ana   userInfoStatus={inbox['userInfoStatus']}"
            f"   userInfo={json.dumps(inbox['userInfo'])}",
            file=out,
        )
        with anyio.move_on_after(15):
            while len({p["eventType"] for p in arrived}) < len(WebhookEventType):
                await anyio.sleep(0.05)
        seen = {p["eventType"] for p in arrived}
        missing = sorted(set(WebhookEventType) - seen)
        if missing:
            print(f"\nmissing events: {', '.join(missing)}", file=out)
            return 1
        print(
            f"\nall {len(WebhookEventType)} event types arrived, every signature valid.", file=out
        )
        print(f"Next: `{command} serve`, then see README.md for the HTTP API.", file=out)
        return 0


def run_demo(out: Any = sys.stdout, command: str = "webhook-plugin") -> int:
    """Play the demo; ``command`` is how the user runs ``webhook-plugin`` here
    (the closing line tells them to run ``serve`` with it)."""

    async def main() -> int:
        secret = generate_secret()
        arrived: list[dict[str, Any]] = []
        hook_sock, api_sock = _listen(), _listen()
        hooks = f"http://127.0.0.1:{hook_sock.getsockname()[1]}"
        api = f"http://127.0.0.1:{api_sock.getsockname()[1]}"
        with tempfile.TemporaryDirectory(prefix="webhook-plugin-demo-") as tmp:
            config = parse_config(
                {
                    "runtime": {"database": f"sqlite:///{Path(tmp) / 'demo.db'}"},
                    "webhook": {"allow_private_hosts": ["127.0.0.1"], "poll_interval": 0.2},
                    "agents": [
                        {
                            "id": "demo",
                            "name": "Demo Bot",
                            "webhook": {
                                "url": f"{hooks}/hook",
                                "header": "Authorization: Bearer demo-token",
                                "signing_secret": secret,
                                "user_info_url": f"{hooks}/lookup",
                            },
                        }
                    ],
                },
                "demo config",
            )
            print(f"receiver on {hooks}, runtime on {api}", file=out)
            servers: list[uvicorn.Server] = []
            result = 1
            async with anyio.create_task_group() as tg:
                tg.start_soon(_serve, _receiver(secret, arrived, out), hook_sock, servers)
                tg.start_soon(_serve, create_app(config), api_sock, servers)
                with anyio.fail_after(20):
                    while len(servers) < 2 or not all(s.started for s in servers):
                        await anyio.sleep(0.02)
                try:
                    result = await _play(api, arrived, out, command)
                finally:
                    for server in servers:
                        server.should_exit = True
        return result

    return anyio.run(main)
