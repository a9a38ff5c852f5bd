"""Enable webhook-plugin in a FastAPI chat app with one add_middleware call.

WEBHOOK_PLUGIN_CONFIG=webhook-plugin.toml uvicorn examples.fastapi_app:app
"""

import os

from fastapi import FastAPI, Request
from pydantic import BaseModel

from webhook_plugin.runtime import WebhookMiddleware, load_config, pipeline_from

app = FastAPI()
app.add_middleware(WebhookMiddleware, config=load_config(os.environ.get("WEBHOOK_PLUGIN_CONFIG")))


class Incoming(BaseModel):
    chat: str
    text: str


@app.post("/chat")
async def incoming(message: Incoming, request: Request) -> dict:
    outcome = await pipeline_from(request).user_message(
        "shop-bot", conversation_id=message.chat, channel="web", text=message.text
    )
    return {"reply": outcome["reply"], "events": outcome["events"]}


@app.get("/inbox/{chat}")
async def inbox(chat: str, request: Request) -> dict:
    return await pipeline_from(request).inbox_view(chat)
