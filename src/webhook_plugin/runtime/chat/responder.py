"""The built-in responder: a tiny rule-based "AI" so the runtime works out of the box.

It implements ``generate_reply`` with ``trylast``: any other plugin that
implements the hook (a real LLM, say) answers first.
"""

from __future__ import annotations

from ...hookspecs import hookimpl
from ...models import Agent, Conversation, Message

__all__ = ["generate_reply"]

_GREETINGS = ("hi", "hello", "hey", "olá", "ola", "oi", "hola", "bonjour")


@hookimpl(trylast=True)
def generate_reply(agent: Agent, conversation: Conversation, message: Message) -> str:
    name = agent.name or agent.id
    text = message.text.strip()
    who = f", {conversation.contact.name}" if conversation.contact.name else ""
    if text.lower().rstrip("!.? ") in _GREETINGS:
        return f"Hello{who}! I am {name}. How can I help you today?"
    if text.endswith("?"):
        return f"Good question{who}. A teammate from {name} will follow up; meanwhile: {text[:200]}"
    return f"Thanks{who}, {name} received your message ({len(text)} characters)."
