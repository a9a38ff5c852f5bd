"""An AI that hangs on its first answer (so that a test can kill the server while
a message is in flight) and answers at once afterwards.

The first call creates the file named by ``SLOW_REPLY_MARKER`` and then
sleeps for a minute; any later call, in any process, sees the file and
answers at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from webhook_plugin import Agent, Conversation, Message, hookimpl


@hookimpl
def generate_reply(agent: Agent, conversation: Conversation, message: Message):  # type: ignore[no-untyped-def]
    marker = Path(os.environ["SLOW_REPLY_MARKER"])

    async def answer() -> str:
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            await anyio.sleep(60)
        return f"answer to {message.text}"

    return answer()
