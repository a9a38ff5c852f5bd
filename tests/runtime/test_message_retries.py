"""A client retrying a user message (same ``messageId``) never gets a second reply
or a second set of events, and the database decides what two requests that
raced get: the first commit's answer, a refusal, or an operator's switch that
stays switched."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from receiver import Receiver
from webhook_plugin import WebhookSettings, hookimpl
from webhook_plugin.runtime import WebhookMiddleware
from webhook_plugin.runtime.chat.pipeline import ChatPipeline, Conflict, IdempotencyMismatch
from webhook_plugin.runtime.config import parse_config

pytestmark = pytest.mark.anyio


class SlowLLM:
    """Answers after ``delay`` seconds; raises on the calls listed in ``fail_on``."""

    def __init__(self, delay: float, fail_on: tuple[int, ...] = ()) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.calls = 0
        self.user_messages = 0

    @hookimpl
    def on_user_message(self, agent, conversation, message):  # type: ignore[no-untyped-def]
        self.user_messages += 1

    @hookimpl
    def generate_reply(self, agent, conversation, message):  # type: ignore[no-untyped-def]
        self.calls += 1
        call = self.calls

        async def answer() -> str:
            await anyio.sleep(self.delay)
            if call in self.fail_on:
                raise RuntimeError("the LLM is down")
            return f"answer {call}"

        return answer()


@asynccontextmanager
async def running(tmp_path: Path, llm: SlowLLM) -> AsyncIterator[ChatPipeline]:
    config = parse_config(
        {
            "runtime": {"database": f"sqlite:///{tmp_path / 'chat.db'}"},
            "webhook": {"allow_private_hosts": ["127.0.0.1"], "poll_interval": 0.05},
        }
    )
    async with WebhookMiddleware(None, config, plugins=[llm]).running() as pipeline:  # type: ignore[arg-type]
        yield pipeline


def send(
    pipeline: ChatPipeline, message_id: str, *, text: str = "olá", agent: str = "bot"
) -> Callable[[], Any]:
    return lambda: pipeline.user_message(
        agent, conversation_id="c1", channel="web", text=text, message_id=message_id
    )


async def test_a_retry_during_the_first_request_gets_the_same_answer(
    tmp_path: Path, receiver: Receiver
) -> None:
    llm = SlowLLM(delay=0.3)
    answers: list[dict[str, Any]] = []
    async with running(tmp_path, llm) as pipeline:
        await pipeline.engine.save_settings("bot", WebhookSettings.validated(url=receiver.url))

        async def call() -> None:
            answers.append(await send(pipeline, "wamid.1")())

        async with anyio.create_task_group() as tg:
            for _ in range(3):  # the client gave up waiting and retried, twice
                tg.start_soon(call)
        view = await pipeline.inbox_view("c1")
        await anyio.to_thread.run_sync(receiver.wait_for, 1, 10)
        await anyio.sleep(0.3)  # anything sent twice would arrive meanwhile
    assert llm.calls == 1 and llm.user_messages == 1  # the twins waited for the first
    assert answers[0] == answers[1] == answers[2]
    assert [m["text"] for m in view["messages"]] == ["olá", "answer 1"]
    [event] = answers[0]["events"]  # one AGENT_USER_MESSAGE, sent once
    assert event["eventType"] == "AGENT_USER_MESSAGE"
    assert [r.headers["webhook-id"] for r in receiver.requests] == [event["webhookId"]]


async def test_a_failed_request_leaves_the_message_to_its_retry(tmp_path: Path) -> None:
    llm = SlowLLM(delay=0, fail_on=(1,))
    async with running(tmp_path, llm) as pipeline:
        with pytest.raises(RuntimeError, match="LLM is down"):
            await send(pipeline, "wamid.2")()
        out = await send(pipeline, "wamid.2")()
    assert out["reply"]["text"] == "answer 2"


async def test_a_retry_of_an_answered_message_runs_no_hook(tmp_path: Path) -> None:
    llm = SlowLLM(delay=0)
    async with running(tmp_path, llm) as pipeline:
        first = await send(pipeline, "wamid.3")()
        again = await send(pipeline, "wamid.3")()
    assert again == first
    assert llm.calls == 1 and llm.user_messages == 1  # the model was not asked again


async def test_twins_on_two_processes_keep_one_answer_and_one_set_of_events(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Two servers on one database both run the hooks for the same message; the
    first to commit keeps its answer and events, and the other answers them."""
    fast, slow = SlowLLM(delay=0.1), SlowLLM(delay=0.6)
    async with running(tmp_path, fast) as one, running(tmp_path, slow) as other:
        await one.engine.save_settings("bot", WebhookSettings.validated(url=receiver.url))
        await other.engine.endpoints.reload()
        answers: dict[str, dict[str, Any]] = {}

        async def call(name: str, pipeline: ChatPipeline) -> None:
            answers[name] = await send(pipeline, "wamid.4")()

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "slow", other)
            tg.start_soon(call, "fast", one)
        assert fast.calls == slow.calls == 1  # both ran the hooks
        await anyio.to_thread.run_sync(receiver.wait_for, 1, 10)
        await anyio.sleep(0.5)  # the slow one's events, were they queued, would come
        view = await one.inbox_view("c1")
    assert answers["slow"] == answers["fast"]
    assert answers["fast"]["reply"]["text"] == "answer 1"
    [event] = answers["fast"]["events"]
    assert [r.headers["webhook-id"] for r in receiver.requests] == [event["webhookId"]]
    assert [m["text"] for m in view["messages"]] == ["olá", "answer 1"]


async def test_the_same_message_id_with_another_request_is_refused(tmp_path: Path) -> None:
    llm = SlowLLM(delay=0)
    async with running(tmp_path, llm) as pipeline:
        first = await send(pipeline, "wamid.5")()
        with pytest.raises(IdempotencyMismatch, match="another request"):
            await send(pipeline, "wamid.5", text="another text")()
        with pytest.raises(IdempotencyMismatch):
            await send(pipeline, "wamid.5", agent="another-agent")()
        assert await send(pipeline, "wamid.5")() == first  # the same request still gets it
        view = await pipeline.inbox_view("c1")
    assert [m["text"] for m in view["messages"]] == ["olá", "answer 1"]


async def test_twins_with_different_requests_racing_get_one_answer_and_a_refusal(
    tmp_path: Path,
) -> None:
    """Both in flight at once in one process: the second waits for the first,
    then is told its request is another one."""
    llm = SlowLLM(delay=0.3)
    async with running(tmp_path, llm) as pipeline:
        outcomes: list[object] = []

        async def call(text: str) -> None:
            try:
                outcomes.append(await send(pipeline, "wamid.6", text=text)())
            except IdempotencyMismatch as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "one")
            await anyio.sleep(0.05)
            tg.start_soon(call, "two")
    assert isinstance(outcomes[0], dict) and isinstance(outcomes[1], IdempotencyMismatch)
    assert llm.calls == 1


async def test_an_operators_switch_holds_while_a_slow_reply_is_in_flight(
    tmp_path: Path,
) -> None:
    llm = SlowLLM(delay=0.5)
    async with running(tmp_path, llm) as pipeline:
        await send(pipeline, "m0")()  # the conversation exists, AI on
        async with anyio.create_task_group() as tg:
            tg.start_soon(send(pipeline, "m1"))  # AI on when it was read
            await anyio.sleep(0.1)
            switched = await pipeline.set_ai("c1", False)  # the operator takes over
            assert switched.ai_enabled is False
        after = await pipeline.conversation("c1")
        later = await send(pipeline, "m2")()
    assert after.ai_enabled is False  # the message in flight did not switch AI back on
    assert later["reply"] is None and llm.calls == 2


async def test_two_agents_first_messages_to_one_new_conversation(tmp_path: Path) -> None:
    """Both read "no such conversation" and ran their hooks: the commit gives it
    to one agent, and refuses the other's message (nothing of it stored)."""
    llm = SlowLLM(delay=0.3)
    async with running(tmp_path, llm) as pipeline:
        outcomes: dict[str, object] = {}

        async def call(agent: str) -> None:
            try:
                outcomes[agent] = await send(pipeline, f"m-{agent}", agent=agent)()
            except Conflict as exc:
                outcomes[agent] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "a")
            tg.start_soon(call, "b")
        record = await pipeline.conversation("c1")
        view = await pipeline.inbox_view("c1")
    refused = [a for a, o in outcomes.items() if isinstance(o, Conflict)]
    assert len(refused) == 1, outcomes
    assert "belongs to another agent" in str(outcomes[refused[0]])
    [owner] = {"a", "b"} - set(refused)
    assert record.agent_id == owner
    assert view["messages"][0]["id"] == f"m-{owner}"
    assert len(view["messages"]) == 2  # the owner's message and its reply only


@pytest.mark.parametrize(
    "stored", [b"not json", b"[1, 2]", b"{" * 5000, "a text, not bytes", 42, b"\xff\xfe"]
)
async def test_a_stored_answer_another_program_wrote_is_a_conflict_never_an_error(
    tmp_path: Path, stored: object
) -> None:
    import sqlite3

    llm = SlowLLM(delay=0)
    async with running(tmp_path, llm) as pipeline:
        await send(pipeline, "wamid.x")()  # the tables exist, the conversation too
        with sqlite3.connect(tmp_path / "chat.db") as conn:
            conn.execute(
                "INSERT INTO message_outcomes VALUES ('c1', 'wamid.7', ?, 1e9, NULL)", (stored,)
            )
            conn.execute("UPDATE console_keys SET signing_key = ?, token_check = ?", (stored, 7))
        outcome: object
        try:
            outcome = await send(pipeline, "wamid.7")()
        except Conflict as exc:
            outcome = exc
        assert isinstance(outcome, Conflict | dict), outcome
        if isinstance(outcome, Conflict):
            assert "wamid.7" in str(outcome)
        key = await pipeline.blocking(pipeline.store.session_key, None)
        assert isinstance(key, bytes) and len(key) == 32  # a new one replaced it
