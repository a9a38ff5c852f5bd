"""The Inbox: the conversations, one conversation (with the user-info hook's
answer), an operator's message, and the AI switch.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import urlencode

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...exceptions import NotFound
from ..api.io import MAX_TEXT_BYTES, parse_id, path_id
from ..chat import channels
from ..chat.inbox import PAGE
from ..chat.middleware import pipeline_from
from ._render import db, field, redirect, render_off_loop, seg
from ._session import read_form, session_of

__all__ = ["conversation", "conversation_events", "inbox", "send_message", "set_ai"]

_AUTHORS: Final = {"user": "User", "agent": "AI agent", "operator": "Operator"}


#: conversations on one page of the Inbox
INBOX_PAGE: Final = 100
#: the Inbox's filters: which conversations to show
SHOW: Final = {
    "": "All",
    "ai-off": "AI off (waiting for an operator)",
    "blocked": "Last message blocked",
}
#: how long one stream of a conversation's news lasts; the browser then asks
#: again (EventSource does, after ``retry``), so no stream outlives a restart long
STREAM_SECONDS: Final = 25.0


async def inbox(request: Request) -> Response:
    pipeline = pipeline_from(request)
    agent_filter = request.query_params.get("agent") or None
    before = request.query_params.get("before") or None
    show = request.query_params.get("show") or ""
    show = show if show in SHOW else ""
    rows = await db(
        pipeline.store.list_conversations,
        agent_id=agent_filter,
        before=before,
        limit=INBOX_PAGE + 1,
        ai_off=show == "ai-off",
        blocked=show == "blocked",
    )
    older = None
    if len(rows) > INBOX_PAGE:
        rows = rows[:INBOX_PAGE]
        query = {"before": rows[-1][0].cursor, **({"agent": agent_filter} if agent_filter else {})}
        if show:
            query["show"] = show
        older = f"?{urlencode(query)}"
    known = await db(pipeline.store.agent_names, [record.agent_id for record, _ in rows])
    names = {agent_id: name or agent_id for agent_id, name in known.items()}
    conversations = [
        {
            "id": record.id,
            "label": record.group_name or record.contact.get("name")
            or record.contact.get("phoneNumber")
            or record.contact.get("email") or record.id,
            "channel": record.channel,
            "agent": names.get(record.agent_id, record.agent_id),
            "ai_enabled": record.ai_enabled,
            "group": record.group_name is not None,
            "last": last,
        }
        for record, last in rows
    ]  # fmt: skip
    return await render_off_loop(
        request,
        "inbox.html",
        section="inbox",
        conversations=conversations,
        agent=agent_filter,
        older=older,
        show=show,
        shows=SHOW,
    )


def _reason(channel: str, status: str) -> str | None:
    """Why a message was blocked or noted: the channel's rule (they depend on nothing else)."""
    if status not in ("blocked", "noted"):
        return None
    verdict, reason = channels.decide(channel, None, 0.0)
    return reason if verdict == status and reason else f"the {channel} channel did not carry it"


async def conversation(request: Request) -> Response:
    pipeline = pipeline_from(request)
    conversation_id = path_id(request, "conversation_id", "conversation id")
    before = parse_id(request.query_params.get("before", ""))
    # the user-info hook runs here, before the page renders, within its time box
    view = await pipeline.inbox_view(conversation_id, before=before, limit=PAGE)
    record = await pipeline.conversation(conversation_id)
    agent = await pipeline.agent(record.agent_id)
    verdict, reason = channels.decide(record.channel, record.last_user_message_at, time.time())
    messages = [
        {**m, "who": _AUTHORS.get(m["author"], m["author"]), "reason": _reason(view["channel"], m["status"])}
        for m in view["messages"]
    ]  # fmt: skip
    contact = view["contact"]
    older = f"?{urlencode({'before': view['nextBefore']})}" if "nextBefore" in view else None
    return await render_off_loop(
        request,
        "conversation.html",
        older=older,
        paged=before is not None,
        section="inbox",
        view=view,
        messages=messages,
        label=view.get("groupName") or contact.get("name") or contact.get("phoneNumber")
        or contact.get("email") or conversation_id,
        group=view.get("groupName"),
        agent_label=agent.name or agent.id,
        prediction={"verdict": verdict, "reason": reason},
        last_seq=record.last_seq or await db(pipeline.store.last_seq, conversation_id) or 0,
        info_items=list((view["userInfo"] or {}).items())[:100],
        timeout=pipeline.engine.config.user_info_timeout,
        max_text=MAX_TEXT_BYTES,
    )  # fmt: skip


async def conversation_events(request: Request) -> Response:
    """Server-sent events: ``changed`` each time the conversation gets a message
    (its ``last_seq`` moves past ``?seq=``), for a page to show it without a
    reload. A stream ends after :data:`STREAM_SECONDS`; the browser reconnects."""
    pipeline = pipeline_from(request)
    conversation_id = path_id(request, "conversation_id", "conversation id")
    text = request.query_params.get("seq", "0")
    seen = int(text) if text.isascii() and text.isdigit() and len(text) < 19 else 0
    if await db(pipeline.store.last_seq, conversation_id) is None:
        raise NotFound(f"conversation {conversation_id!r} does not exist")

    async def stream() -> AsyncIterator[bytes]:
        nonlocal seen
        yield b"retry: 1000\n\n"
        deadline = anyio.current_time() + STREAM_SECONDS
        while anyio.current_time() < deadline:
            now = await db(pipeline.store.last_seq, conversation_id)
            if now is not None and now > seen:
                seen = now
                yield b"event: changed\ndata: %d\n\n" % now
            await anyio.sleep(1.0)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def send_message(request: Request) -> Response:
    pipeline = pipeline_from(request)
    conversation_id = path_id(request, "conversation_id", "conversation id")
    fields = await read_form(request)
    text = field(fields, "text")
    page = f"/inbox/{seg(conversation_id)}"
    record = await pipeline.conversation(conversation_id)  # 404 before anything else
    session = session_of(request)
    if not text.strip():
        session.flash("error", "Type a message first.")
        return redirect(page)
    if len(text.encode()) > MAX_TEXT_BYTES:
        session.flash("error", f"The message is longer than {MAX_TEXT_BYTES} bytes.")
        return redirect(page)
    outcome = await pipeline.inbox_message(conversation_id, text)
    status = outcome["status"]
    if status == "sent":
        session.flash("ok", "Sent.")
    else:
        what = "Blocked" if status == "blocked" else "Noted"
        session.flash("warn", f"{what}: {_reason(record.channel, status)}.")
    return redirect(page)


async def set_ai(request: Request) -> Response:
    conversation_id = path_id(request, "conversation_id", "conversation id")
    fields = await read_form(request)
    enabled = field(fields, "ai_enabled") == "on"
    await pipeline_from(request).set_ai(conversation_id, enabled)
    session_of(request).flash(
        "ok",
        "AI enabled: the agent answers this conversation's messages."
        if enabled
        else "AI disabled: user messages now wait for an operator (USER_MESSAGE_RECEIVED).",
    )
    return redirect(f"/inbox/{seg(conversation_id)}")
