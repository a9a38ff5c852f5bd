"""Helpers shared by the delivery benchmarks: the receiver process, its stats, events."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from webhook_plugin import Agent, Contact, Conversation, Message

HERE = Path(__file__).parent
AGENT = Agent(id="bench", name="Bench Bot", organization_id="org_b")
CONVERSATION = Conversation(
    id="conv_bench",
    agent_id="bench",
    channel="whatsapp",
    contact=Contact(
        id="u1", name="Ana Souza", email="ana@example.com", phone_number="+5511999990000"
    ),
)
USER = Message(id="m_user", text="Olá! " + "x" * 300, created_at=datetime.now(UTC))


def agent_message(text: str) -> Message:
    return Message(id="m_agent", text=text, created_at=datetime.now(UTC))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def receiver(fail_rate: float = 0.0) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_receiver.py"), str(port), str(fail_rate)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/stats") as r:
        return json.loads(r.read())


def reset(url: str) -> None:
    urllib.request.urlopen(f"{url}/reset").read()


async def live(pm: Any, rate: float, seconds: float, conversations: int = 1_000_000) -> None:
    """Hook calls at ``rate`` a second for ``seconds``, spread over ``conversations``;
    each payload carries its hook-call time (the receiver's latency)."""
    import anyio
    import msgspec

    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await anyio.sleep(delay)
        pm.hook.on_agent_reply(
            agent=AGENT,
            conversation=msgspec.structs.replace(CONVERSATION, id=f"live_{i % conversations}"),
            message=agent_message(f"t={time.time():.6f} " + "y" * 580),
            in_reply_to=USER,
        )
