"""Race 1 of the database-decides issue, black box: two servers on one database;
the one a client talks to is stopped (SIGSTOP) with messages in flight, the
client retries each unanswered message, same body, on the other one; then the
first resumes and finishes what it had started. Every messageId has one answer,
whoever is asked, and one delivered webhook-id: the commit decides."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import POSTGRES_URL, TESTS
from receiver import Receiver
from servers import AUTH, SECRET, Server, postgres_database

pytestmark = pytest.mark.slow

N = 160


def config(tmp: Path, database: str, receiver_url: str) -> Path:
    path = tmp / "webhook-plugin.toml"
    path.write_text(
        f"""
[runtime]
plugins = ["webhook_plugin", "plugins.thinking_reply"]
database = "{database}"
api_token = "{AUTH["Authorization"].removeprefix("Bearer ")}"

[webhook]
allow_private_hosts = ["127.0.0.1"]
retry_schedule = [0, 0.2, 0.2, 0.2]
poll_interval = 0.1
timeout = 3.0

[[agents]]
id = "support"

[agents.webhook]
url = "{receiver_url}/hook"
signing_secret = "{SECRET}"
events = ["AGENT_USER_MESSAGE"]
"""
    )
    return path


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_server_stopped_mid_message_and_a_retry_elsewhere_give_one_answer_and_one_webhook(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = f"stop_retry_{os.getpid()}"
    database = (
        f"sqlite:///{tmp_path / 'chat.db'}" if backend == "sqlite" else postgres_database(schema)
    )
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    answers: dict[str, list[dict]] = collections.defaultdict(list)
    retried: list[int] = []
    lock = threading.Lock()
    with Receiver() as rx:
        path = config(tmp_path, database, rx.url)
        first, second = Server(path, tmp_path), Server(path, tmp_path)
        stopped = threading.Event()
        try:

            def body(i: int) -> dict[str, str]:
                return {
                    "conversationId": f"conv-{i % 40}",
                    "channel": "web",
                    "text": f"message {i}",
                    "messageId": f"wamid.{i}",
                }

            def deliver(i: int) -> None:
                """Post to the first server; when it does not answer in time,
                retry the same body on the second until it does."""
                try:
                    r = httpx.post(
                        f"{first.url}/v1/agents/support/messages",
                        json=body(i),
                        headers=AUTH,
                        timeout=1.5,
                    )
                except httpx.TimeoutException:
                    retried.append(i)
                    deadline = time.monotonic() + 30
                    while True:  # as a client does: again after Retry-After on a 503
                        r = httpx.post(
                            f"{second.url}/v1/agents/support/messages",
                            json=body(i),
                            headers=AUTH,
                            timeout=30,
                        )
                        if r.status_code != 503 or time.monotonic() > deadline:
                            break
                        # the stopped server holds the rows it was writing: the
                        # other waits a few seconds for them, then says 503
                        assert r.headers["retry-after"], r.text
                        time.sleep(0.5)
                assert r.status_code == 200, r.text
                with lock:
                    answers[f"wamid.{i}"].append(r.json())

            with ThreadPoolExecutor(24) as pool:
                futures = [pool.submit(deliver, i) for i in range(N)]
                deadline = time.monotonic() + 30
                while sum(map(len, answers.values())) < N // 4:
                    assert time.monotonic() < deadline, "the first server never answered"
                    time.sleep(0.01)
                os.kill(first.proc.pid, signal.SIGSTOP)  # with messages in flight
                stopped.set()
                time.sleep(7)  # longer than any lease or heartbeat an earlier version kept
                os.kill(first.proc.pid, signal.SIGCONT)
                for f in futures:
                    f.result()
            time.sleep(1.0)  # the first server finishes what it had started
            for i in range(N):  # every message asked again, on both servers
                for server in (first, second):
                    r = httpx.post(
                        f"{server.url}/v1/agents/support/messages",
                        json=body(i),
                        headers=AUTH,
                        timeout=30,
                    )
                    assert r.status_code == 200, r.text
                    answers[f"wamid.{i}"].append(r.json())
            deadline = time.monotonic() + 30
            while len({r.headers["webhook-id"] for r in rx.requests}) < N:
                assert time.monotonic() < deadline, "not every message's webhook arrived"
                time.sleep(0.05)
            time.sleep(1.5)  # a second webhook-id for one message would arrive meanwhile
        finally:
            if stopped.is_set():
                os.kill(first.proc.pid, signal.SIGCONT)
            logs = first.stop() + second.stop()
            if backend == "postgres":
                from webhook_plugin.storage.postgres import drop_schema

                drop_schema(POSTGRES_URL, schema)
    assert "Traceback" not in logs, logs[-3000:]
    assert retried, "no message was retried on the second server: the test proved nothing"
    for message_id, given in answers.items():
        assert all(a == given[0] for a in given), (message_id, given)
    webhooks: dict[str, set[str]] = collections.defaultdict(set)
    for r in rx.requests:
        webhooks[json.loads(r.body)["userMessageId"]].add(r.headers["webhook-id"])
    assert len(webhooks) == N
    for message_id, ids in webhooks.items():
        [event] = answers[message_id][0]["events"]
        assert ids == {event["webhookId"]}, (message_id, ids, event)
