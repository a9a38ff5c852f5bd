"""The floor for `bench_api.py`: a bare Starlette endpoint on the message route.

It decodes the same body as `POST /v1/agents/{agentId}/messages` (a msgspec
Struct) and answers JSON of the same shape, with no token check, no pipeline,
no storage and no webhooks.
"""

from __future__ import annotations

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


class MessageIn(msgspec.Struct, rename="camel"):
    conversation_id: str
    channel: str
    text: str


_decode = msgspec.json.Decoder(MessageIn).decode
_encode = msgspec.json.Encoder().encode
_count = 0


async def post_message(request: Request) -> Response:
    global _count
    body = _decode(await request.body())
    _count += 1
    answer = {
        "conversationId": body.conversation_id,
        "messageId": f"m_{_count}",
        "reply": None,
        "events": [],
    }
    return Response(_encode(answer), media_type="application/json")


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(
    routes=[
        Route("/v1/agents/{agent_id}/messages", post_message, methods=["POST"]),
        Route("/healthz", healthz),
    ]
)
