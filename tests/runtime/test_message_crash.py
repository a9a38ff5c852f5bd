"""kill -9 between a message's reservation and its answer: the retry, on another
server, is taken over within seconds and answered once, with one set of events
that the killed server never sent."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import POSTGRES_URL, TESTS
from receiver import Receiver, Reply
from servers import CLI, free_port, postgres_database

pytestmark = pytest.mark.slow


def serve(config: Path, tmp: Path, marker: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(TESTS), "SLOW_REPLY_MARKER": str(marker)}
    with (tmp / f"serve-{port}.log").open("w") as log:
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--port", str(port)],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError((tmp / f"serve-{port}.log").read_text())


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_message_in_flight_survives_its_servers_death(tmp_path: Path, backend: str) -> None:
    database = (
        f"sqlite:///{tmp_path / 'chat.db'}"
        if backend == "sqlite"
        else postgres_database(f"crash_{os.getpid()}")
    )
    marker = tmp_path / "first-call"
    with Receiver(lambda r: Reply(200)) as rx:
        config = tmp_path / "webhooks.toml"
        config.write_text(
            f'[runtime]\ndatabase = "{database}"\n'
            'plugins = ["webhook_plugin", "plugins.slow_reply"]\n'
            '[webhook]\nallow_private_hosts = ["127.0.0.1"]\n'
            f'[[agents]]\nid = "support"\n[agents.webhook]\nurl = "{rx.url}/hook"\n'
        )
        body = {"conversationId": "c1", "channel": "website", "text": "hi", "messageId": "m-1"}
        first, first_url = serve(config, tmp_path, marker)
        try:

            def post_and_lose_the_answer() -> None:
                try:
                    httpx.post(f"{first_url}/v1/agents/support/messages", json=body, timeout=30)
                except httpx.HTTPError:
                    pass  # the server dies under it: the client never hears back

            hung = threading.Thread(target=post_and_lose_the_answer, daemon=True)
            hung.start()
            deadline = time.monotonic() + 10
            while not marker.exists():  # reserved, hooks called, the AI thinking
                assert time.monotonic() < deadline, "the first request never reached the AI"
                time.sleep(0.02)
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
        second, second_url = serve(config, tmp_path, marker)
        try:
            started = time.monotonic()
            retried = httpx.post(f"{second_url}/v1/agents/support/messages", json=body, timeout=30)
            took = time.monotonic() - started
            again = httpx.post(f"{second_url}/v1/agents/support/messages", json=body, timeout=30)
            assert retried.status_code == 200, retried.text
            assert took < 15, f"the dead server's reservation blocked the retry for {took:.1f} s"
            assert again.json() == retried.json()  # the same reply, the same webhook-ids
            events = {e["webhookId"] for e in retried.json()["events"]}
            assert events and retried.json()["reply"]["text"] == "answer to hi"
            rx.wait_for(len(events), timeout=15)
            time.sleep(0.5)  # anything else would have come by now
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=15)
            if backend == "postgres":
                from webhook_plugin.storage.postgres import drop_schema

                drop_schema(POSTGRES_URL, database.rpartition("schema=")[2])
    received = [r.headers["webhook-id"] for r in rx.requests]
    # the killed server's events were never stored, so never sent: one set only
    assert sorted(received) == sorted(events)
