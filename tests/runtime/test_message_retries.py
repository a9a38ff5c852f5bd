"""A client retrying a user message (same ``messageId``) never gets a second reply
or a second set of events, even while the first request is still running."""

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
from webhook_plugin.runtime import reservations as reservations_module
from webhook_plugin.runtime.config import parse_config
from webhook_plugin.runtime.pipeline import ChatPipeline, Conflict

pytestmark = pytest.mark.anyio


class SlowLLM:
    """Answers after ``delay`` seconds; raises on the calls listed in ``fail_on``."""

    def __init__(self, delay: float, fail_on: tuple[int, ...] = ()) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.calls = 0

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


def send(pipeline: ChatPipeline, message_id: str) -> Callable[[], Any]:
    return lambda: pipeline.user_message(
        "bot", conversation_id="c1", channel="web", text="olá", message_id=message_id
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
    assert llm.calls == 1
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


async def test_a_retry_that_waits_too_long_gets_a_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reservations_module, "WAIT_FOR_TWIN", 0.2)
    llm = SlowLLM(delay=1.0)
    async with running(tmp_path, llm) as pipeline:
        async with anyio.create_task_group() as tg:
            tg.start_soon(send(pipeline, "wamid.3"))
            with anyio.fail_after(5):
                while not llm.calls:  # the first request holds the message now
                    await anyio.sleep(0.01)
            with pytest.raises(Conflict, match="still being processed"):
                await send(pipeline, "wamid.3")()
        again = await send(pipeline, "wamid.3")()  # once the first is done: its answer
    assert llm.calls == 1 and again["reply"]["text"] == "answer 1"
