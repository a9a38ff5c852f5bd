"""CPU per message on the event loop's thread, in one process: steadier than rates.

    python benchmarks/bench_cpu.py [--json] [--messages N] [--rounds R]

Rates on a shared 2-core machine move with the neighbours; the CPU one
message costs moves far less. Two paths, each driven in this process:

- ``route``: the runtime app (`create_app`, no delivery workers, SQLite in a
  temp dir) called through ASGI with 32 messages in flight: the route, its
  middlewares, the hooks, the payload and the group commit, without an HTTP
  server; with the message chat clients send (`_deployments.message`: a
  `messageId` and a contact) and with the bare body.
- ``engine (asyncio|trio)``: the hook, the outbox, the dispatcher and the
  client, to the loopback receiver of `_common.py`.

Reported: microseconds of CPU per message on the event loop's thread
(`time.thread_time`) and in the whole process (`time.process_time`), median
of the rounds. To compare two versions, run this script on each, turn about
(`PYTHONPATH=<other tree>/src` runs another checkout with the same venv).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from _common import AGENT, CONVERSATION, USER, agent_message, receiver, reset
from _deployments import message
from _harness import emit, environment, parser
from bench_delivery import _engine, _wait_for
from webhook_plugin import PluginManager, WebhookPlugin, WebhookSettings
from webhook_plugin.runtime import load_config
from webhook_plugin.runtime.app import create_app

TOKEN = "bench-token-0123456789abcdef"


def route(n: int, tmp: Path, kind: str = "contract") -> tuple[float, float]:
    config = tmp / f"route-{time.monotonic_ns()}.toml"
    config.write_text(
        f"""
[runtime]
plugins = ["webhook_plugin"]
database = "sqlite:///{tmp / f"route-{time.monotonic_ns()}.db"}"
api_token = "{TOKEN}"
[webhook]
allow_private_hosts = ["127.0.0.1"]
[[agents]]
id = "perf"
[agents.webhook]
url = "http://127.0.0.1:9/hook"
"""
    )
    app = create_app(load_config(str(config)), workers=False)
    headers = [
        (b"authorization", f"Bearer {TOKEN}".encode()),
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
    ]
    state: dict[str, Any] = {}

    async def call(body: bytes) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/agents/perf/messages",
            "raw_path": b"/v1/agents/perf/messages",
            "query_string": b"",
            "root_path": "",
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
            "state": state,
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        if statuses != [200]:
            raise RuntimeError(f"the route answered {statuses}")

    async def many(bodies: list[bytes]) -> None:
        numbers = iter(bodies)

        async def worker() -> None:
            for body in numbers:
                await call(body)

        await asyncio.gather(*(worker() for _ in range(32)))

    async def main() -> tuple[float, float]:
        lifespan: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        sent: list[dict[str, Any]] = []

        async def lsend(message: dict[str, Any]) -> None:
            sent.append(message)

        await lifespan.put({"type": "lifespan.startup"})
        task = asyncio.create_task(
            app(
                {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state},
                lifespan.get,
                lsend,
            )
        )
        while not sent:
            await asyncio.sleep(0.01)
        if sent[0]["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app did not start: {sent[0]}")
        await many([message("warm", i, kind) for i in range(300)])
        bodies = [message("timed", i, kind) for i in range(n)]  # made before the clock starts
        t0, p0 = time.thread_time(), time.process_time()
        await many(bodies)
        result = 1e6 * (time.thread_time() - t0) / n, 1e6 * (time.process_time() - p0) / n
        await lifespan.put({"type": "lifespan.shutdown"})
        await task
        return result

    return asyncio.run(main())


def engine(url: str, n: int, backend: str, tmp: Path) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        async with _engine(str(tmp), 64) as e:
            await e.save_settings("bench", WebhookSettings.validated(url=f"{url}/hook"))
            pm = PluginManager()
            pm.register(WebhookPlugin(e))
            message = agent_message("y" * 600)
            await anyio.to_thread.run_sync(reset, url)
            t0, p0 = time.thread_time(), time.process_time()
            for i in range(n):
                pm.hook.on_agent_reply(
                    agent=AGENT, conversation=CONVERSATION, message=message, in_reply_to=USER
                )
                if i % 500 == 0:
                    await anyio.lowlevel.checkpoint()
            await _wait_for(url, n, 120)
            return 1e6 * (time.thread_time() - t0) / n, 1e6 * (time.process_time() - p0) / n

    return anyio.run(main, backend=backend)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=5_000)
    p.set_defaults(rounds=3)
    args = p.parse_args()
    n = 500 if args.quick else args.messages
    rounds = 1 if args.quick else args.rounds
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as t, receiver() as url:
        tmp = Path(t)
        paths = {
            "route, contract body (ASGI, no HTTP server, no delivery)": lambda: route(n, tmp),
            "route, bare body": lambda: route(n, tmp, "bare"),
            "engine, hook to receiver (asyncio)": lambda: engine(url, 2 * n, "asyncio", tmp),
            "engine, hook to receiver (trio)": lambda: engine(url, 2 * n, "trio", tmp),
        }
        for name, fn in paths.items():
            results = [fn() for _ in range(rounds)]
            rows.append(
                [
                    name,
                    round(statistics.median(r[0] for r in results)),
                    round(statistics.median(r[1] for r in results)),
                ]
            )
    title = f"bench_cpu: {n:,} messages ({environment()}), median of {rounds} round(s)"
    emit(args, title, ["path", "event loop us/msg", "process us/msg"], rows)


if __name__ == "__main__":
    main()
