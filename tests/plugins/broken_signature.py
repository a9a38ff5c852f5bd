"""A plugin with a mistake: its hook asks for an argument no pipeline passes."""

from webhook_plugin import hookimpl


@hookimpl
def on_agent_reply(agent, conversation, message, in_reply_to, sentiment):  # type: ignore[no-untyped-def]
    pass
