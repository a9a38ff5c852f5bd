"""An AI that thinks for 0.3 s before each answer, as a real model does (so
that a server stopped mid-way holds messages between their hooks and their
commit)."""

from __future__ import annotations

import anyio

from webhook_plugin import Agent, Conversation, Message, hookimpl


@hookimpl
def generate_reply(agent: Agent, conversation: Conversation, message: Message):  # type: ignore[no-untyped-def]
    async def answer() -> str:
        await anyio.sleep(0.3)
        return f"answer to {message.text}"

    return answer()
