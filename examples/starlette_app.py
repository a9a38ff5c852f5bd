"""Enable webhook-plugin in an existing Starlette chat app: wrap it, call the pipeline.

WEBHOOK_PLUGIN_CONFIG=webhook-plugin.toml uvicorn examples.starlette_app:app
"""

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from webhook_plugin.runtime import WebhookMiddleware, load_config, pipeline_from


async def incoming(request: Request) -> JSONResponse:
    data = await request.json()
    # runs on_user_message, the AI reply and on_agent_reply; returns once the
    # webhook events are durably queued
    outcome = await pipeline_from(request).user_message(
        "shop-bot", conversation_id=data["chat"], channel="web", text=data["text"]
    )
    return JSONResponse({"reply": outcome["reply"], "events": outcome["events"]})


async def operator(request: Request) -> JSONResponse:
    data = await request.json()
    outcome = await pipeline_from(request).inbox_message(data["chat"], data["text"])
    return JSONResponse(outcome)


app = WebhookMiddleware(
    Starlette(
        routes=[
            Route("/chat", incoming, methods=["POST"]),
            Route("/operator", operator, methods=["POST"]),
        ]
    ),
    load_config(os.environ.get("WEBHOOK_PLUGIN_CONFIG")),
)
