"""The `webhook-plugin` commands as users run them: serve, deliveries, redeliver,
schema, demo, worker; config errors and log formats."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from helpers import closed_port_url
from receiver import Receiver
from servers import AUTH, CLI, Server, free_port, post_message, write_config


def test_cli_deliveries_and_redeliver(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    _server, rx, tmp = env
    post_message(api, "cli-1")
    config = str(tmp / "webhook-plugin.toml")
    out = subprocess.run(
        [*CLI, "deliveries", "--config", config, "--agent", "support"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert lines[0].split()[:6] == ["ID", "AGENT", "EVENT", "CONVERSATION", "SEQ", "STATUS"]
    assert any("AGENT_USER_MESSAGE" in line and "cli-1" in line for line in lines[1:])
    only = subprocess.run(
        [*CLI, "deliveries", "--config", config, "--conversation", "cli-1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(only) == 2 and "cli-1" in only[1]
    as_json = json.loads(
        subprocess.run(
            [*CLI, "deliveries", "--config", config, "--json", "--limit", "1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    [latest] = as_json
    red = subprocess.run(
        [*CLI, "redeliver", str(latest["id"]), "--config", config],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"delivery {latest['id']}" in red.stdout
    hooks = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        hooks = [r for r in rx.requests if r.headers.get("webhook-id") == latest["webhookId"]]
        if len(hooks) >= 2:
            break
        time.sleep(0.05)
    assert hooks is not None and len(hooks) >= 2


def test_serve_refuses_a_public_bind_without_a_token(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "api_token" in r.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[webhook]\ntimeout = 'fast'\n",
            "Expected `float`, got `str` - at `webhook.timeout`",
        ),
        ("[webhook]\ntimeout = -1\n", "webhook.timeout"),
        ("[webhok]\n", "unknown field `webhok`"),
        ("[runtime]\napi_token = ''\n", "runtime.api_token"),
        (
            "[[agents]]\nid = 'a'\n[agents.webhook]\nheader = \"X-A: b\\nc\"\n",
            "agents[0].webhook.header",
        ),
        (
            "[[agents]]\nid = 'a'\n[agents.webhook]\nevents = ['SENT']\n",
            "unknown event type",
        ),
        ("[[agents]]\nid = 'a'\n[[agents]]\nid = 'a'\n", "appears twice"),
        ("[runtime]\ndatabase = 'mysql://x'\n", "sqlite:///FILE or postgresql://"),
        ("not toml at all =\n", "not valid TOML"),
    ],
)
def test_config_errors_say_where_and_what(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    r = subprocess.run(
        [*CLI, "serve", "--config", str(path), "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert message in r.stderr, r.stderr[-1500:]


def test_schema_command_prints_every_payload_schema() -> None:
    r = subprocess.run([*CLI, "schema"], capture_output=True, text=True, check=True)
    schemas = json.loads(r.stdout)
    # the six conversation events, the settings test, and four operational events
    assert len(schemas) == 11 and "GROUP_MESSAGE_RECEIVED" in schemas
    assert "sequence" in schemas["AGENT_USER_MESSAGE"]["$defs"]["AgentUserMessage"]["required"]
    assert "ENDPOINT_DISABLED" in schemas
    test = schemas["WEBHOOK_TEST"]["$defs"]["WebhookTest"]
    assert test["properties"]["eventType"] == {"enum": ["WEBHOOK_TEST"]}


@pytest.mark.slow
def test_demo_shows_all_six_events_with_valid_signatures(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "all 6 event types arrived, every signature valid." in r.stdout
    assert "INVALID" not in r.stdout
    assert r.stdout.count("signature valid") >= 6
    assert list(tmp_path.iterdir()) == []  # the demo leaves nothing behind


@pytest.mark.slow
def test_a_worker_delivers_what_serve_no_workers_queued_on_the_same_sqlite_file(
    tmp_path: Path,
) -> None:
    """The embedded setup in two processes: the API and the deliveries apart,
    one SQLite file between them; the worker wakes on the API's commits."""
    import signal

    with Receiver() as rx:
        config = write_config(tmp_path, rx.url)
        server = Server(config, tmp_path, "--no-workers")
        with (tmp_path / "worker.log").open("w") as log:
            worker = subprocess.Popen(
                [*CLI, "worker", "--config", str(config)],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as api:
                time.sleep(1.0)  # the worker is up
                answers = [post_message(api, f"split-{i}") for i in range(5)]
            queued = {e["webhookId"] for a in answers for e in a["events"]}
            assert queued
            rx.wait_for(len(queued), timeout=15)
            assert {r.headers["webhook-id"] for r in rx.requests if r.path == "/hook"} == queued
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=20) == 0, (tmp_path / "worker.log").read_text()
            server.stop()


def test_cli_on_a_missing_database_says_so(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "deliveries"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "no database at webhook-plugin.db" in r.stderr
    assert list(tmp_path.iterdir()) == []  # and does not create one


def test_json_logs_on_request(tmp_path: Path) -> None:
    with Receiver() as rx:
        server = Server(write_config(tmp_path, rx.url), tmp_path, "--log-format", "json")
        with httpx.Client(base_url=server.url, headers=AUTH) as api:
            post_message(api, "json-logs")
            rx.wait_for(1)
        log = server.stop()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    names = {e["event"] for e in events}
    assert {"engine.started", "runtime.started"} <= names
    assert all("level" in e and "timestamp" in e for e in events)


def test_every_command_and_option_says_what_it_does() -> None:
    from webhook_plugin.cli import build_parser

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {c.dest: c.help for c in commands._choices_actions}
    for name, sub in commands.choices.items():
        assert helps.get(name), f"`{name}` has no description"
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"`{name} {'/'.join(action.option_strings) or action.dest}`"


def test_redeliver_without_an_id_says_what_to_give(tmp_path: Path) -> None:
    r = subprocess.run([*CLI, "redeliver"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "a delivery ID" in r.stderr and "not both" not in r.stderr


def test_recover_says_how_many_then_queues_them_with_yes(
    env: tuple[Server, Receiver, Path], api: httpx.Client
) -> None:
    _server, _rx, tmp = env
    config = str(tmp / "webhook-plugin.toml")
    agent = "cli-recover"
    assert (
        api.put(f"/v1/agents/{agent}/webhook", json={"url": closed_port_url()}).status_code == 200
    )
    r = api.post(
        f"/v1/agents/{agent}/messages",
        json={"conversationId": "cr-1", "channel": "web", "text": "hi"},
    )
    [event] = r.json()["events"]
    deadline = time.monotonic() + 10
    while api.get(f"/v1/agents/{agent}/webhook/deliveries?status=failed").json() == []:
        assert time.monotonic() < deadline, "the delivery never failed"
        time.sleep(0.05)
    dry = subprocess.run(
        [*CLI, "recover", agent, "--since", "1h", "--config", config],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert dry.stdout.startswith("1 failed or held") and "--yes" in dry.stdout
    assert api.get(f"/v1/agents/{agent}/webhook/deliveries?status=failed").json() != []
    done = subprocess.run(
        [*CLI, "recover", agent, "--since", "1h", "--yes", "--config", config],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.startswith("1 deliveries queued again")
    rows = api.get(
        f"/v1/agents/{agent}/webhook/deliveries", params={"webhookId": event["webhookId"]}
    ).json()
    assert [row["webhookId"] for row in rows] == [event["webhookId"]]


def test_the_banner_and_the_demo_name_a_command_that_runs_as_typed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shlex
    import shutil
    import sys

    from webhook_plugin.cli._commands import command_name

    script = Path(sys.executable).parent / "webhook-plugin"  # the virtualenv's, as make installs
    monkeypatch.setattr(sys, "argv", [str(script), "serve"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the virtualenv is not activated
    named = command_name()
    assert named != "webhook-plugin" or shutil.which("webhook-plugin")
    ran = subprocess.run(
        [*shlex.split(named), "--version"], capture_output=True, text=True, check=True
    )
    assert ran.stdout.startswith("webhook-plugin ")
    monkeypatch.setattr(sys, "argv", ["-m", "serve"])  # python -m webhook_plugin.cli
    assert command_name().endswith(" -m webhook_plugin.cli")


def test_a_worker_process_tells_the_plugins_hooks_of_its_operational_events(
    tmp_path: Path,
) -> None:
    """`serve --no-workers` queues, `worker` delivers: the delivery that runs out
    of attempts is told to the config's plugin in the worker, once."""
    import signal

    from helpers import TESTS

    pager = tmp_path / "pager.jsonl"
    database = f"sqlite:///{tmp_path / 'ops.db'}"
    config = tmp_path / "ops.toml"
    config.write_text(
        f"""
[runtime]
plugins = ["webhook_plugin", "plugins.pager"]
database = "{database}"
api_token = "ops-token-0123456789abcdef"

[webhook]
allow_private_hosts = ["127.0.0.1"]
retry_schedule = [0, 0.1]
poll_interval = 0.1

[[agents]]
id = "support"

[agents.webhook]
url = "{closed_port_url()}"
"""
    )
    env = {
        **os.environ,
        "PAGER_FILE": str(pager),
        "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p),
    }
    server = Server(config, tmp_path, "--no-workers", env=env)
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [*CLI, "worker", "--config", str(config)],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log, env=env,
        )  # fmt: skip
    try:
        headers = {"Authorization": "Bearer ops-token-0123456789abcdef"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as api:
            time.sleep(1.0)  # the worker is up
            [event] = post_message(api, "ops-1")["events"]
        deadline = time.monotonic() + 20
        while not pager.exists() or "DELIVERY_EXHAUSTED" not in pager.read_text():
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, (tmp_path / "worker.log").read_text()
        server.stop()
    told = [json.loads(line) for line in pager.read_text().splitlines()]
    assert {"eventType": "DELIVERY_EXHAUSTED", "agentId": "support"} in told
    assert sum(t["eventType"] == "DELIVERY_EXHAUSTED" for t in told) == 1
    assert event["webhookId"]
