"""`webhook-plugin serve` as users run it, in a subprocess, for the runtime tests."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from helpers import POSTGRES_URL, REQUIRE_POSTGRES, postgres_available
from receiver import Receiver, Recorded, Reply

TOKEN = "test-token-0123456789abcdef"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLI = [sys.executable, "-m", "webhook_plugin.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, receiver_url: str, database: str | None = None, **runtime: str) -> Path:
    runtime_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in runtime.items())
    path = tmp / "webhook-plugin.toml"
    database = database or f"sqlite:///{tmp / 'runtime.db'}"
    path.write_text(
        f"""
[runtime]
plugins = ["webhook_plugin"]
database = "{database}"
api_token = "{TOKEN}"
{runtime_lines}

[webhook]
allow_private_hosts = ["127.0.0.1"]
retry_schedule = [0, 0.1, 0.1]
poll_interval = 0.1
timeout = 3.0

[[agents]]
id = "support"
name = "Support Bot"
organization_id = "org_9"

[agents.webhook]
url = "{receiver_url}/hook"
header = "Authorization: Bearer receiver-secret-value"
signing_secret = "{SECRET}"
user_info_url = "{receiver_url}/lookup"
user_info_header = "X-Api-Key: crm-key-value"
"""
    )
    return path


class Server:
    """`webhook-plugin serve` in a subprocess; ready once ``/healthz`` answers.

    :param cli: how to run the command (a wrapper may set limits first).
    """

    def __init__(
        self,
        config: Path,
        cwd: Path,
        *extra: str,
        cli: Sequence[str] = tuple(CLI),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    *cli,
                    "serve",
                    "--config",
                    str(config),
                    "--port",
                    str(self.port),
                    *extra,
                ],
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError(f"server did not start:\n{self.log.read_text()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


def postgres_database(schema: str) -> str:
    """A database URL for a fresh schema, or skip (fail in CI) without a server."""
    reason = postgres_available()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    return f"{POSTGRES_URL}?schema={schema}"


def crm(r: Recorded) -> Reply:
    """A receiver that also answers user-info lookups (``/lookup``)."""
    if r.path == "/lookup":
        return Reply(200, body=b'{"plan": "gold", "customerSince": "2021-03-14"}')
    return Reply(204, body=b"")


def hooks_for(rx: Receiver, webhook_id: str, timeout: float = 10) -> list[Recorded]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in rx.requests if r.headers.get("webhook-id") == webhook_id]
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"webhook {webhook_id} never arrived")


def post_message(api: httpx.Client, conversation: str, **body: object) -> dict:
    payload = {
        "conversationId": conversation,
        "channel": "whatsapp",
        "text": "Olá, tudo bem?",
        **body,
    }
    response = api.post("/v1/agents/support/messages", json=payload)
    assert response.status_code == 200, response.text
    return response.json()
