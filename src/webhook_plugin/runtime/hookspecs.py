"""Hooks of the reference runtime itself (in addition to :mod:`webhook_plugin.hookspecs`)."""

from __future__ import annotations

from collections.abc import Awaitable

from ..hookspecs import _hookspec
from ..models import Agent, Conversation, Message

__all__ = ["generate_reply"]


@_hookspec(firstresult=True)
def generate_reply(
    agent: Agent, conversation: Conversation, message: Message
) -> str | Awaitable[str] | None:
    """Write the AI agent's answer to a user's message.

    Called when AI is enabled for the conversation, after ``on_user_message``.
    The first plugin that returns a text (or an awaitable resolving to one)
    answers; the built-in responder (registered as ``webhook_plugin.runtime.responder``)
    answers last, so any plugin implementing this hook, such as one calling an
    LLM, replaces it. Return ``None`` to let the next plugin answer.

    :param message: the user's message to answer.
    :return: the answer's text, an awaitable of it, or ``None``.
    """
