"""A third-party plugin, written as an outside author would: it keeps an audit
trail of every stage and answers ``fetch_user_info`` from a static directory."""

from __future__ import annotations

from webhook_plugin import Agent, Conversation, Group, Message, UserInfo, hookimpl

TRAIL: list[tuple[str, str]] = []
DIRECTORY = {"u1": {"plan": "gold", "source": "audit_log"}}


@hookimpl
def on_user_message(agent: Agent, conversation: Conversation, message: Message) -> None:
    TRAIL.append(("user_message", message.id))


@hookimpl
def on_agent_reply(
    agent: Agent, conversation: Conversation, message: Message, in_reply_to: Message | None
) -> None:
    TRAIL.append(("agent_reply", message.id))


@hookimpl
def on_group_message(
    agent: Agent, conversation: Conversation, message: Message, group: Group
) -> None:
    TRAIL.append(("group_message", group.id))


@hookimpl
def fetch_user_info(agent: Agent, conversation: Conversation):  # type: ignore[no-untyped-def]
    data = DIRECTORY.get(conversation.contact.id or "")
    if data is None:
        return None

    async def answer() -> UserInfo:
        return UserInfo(status="ok", data=data)

    return answer()
