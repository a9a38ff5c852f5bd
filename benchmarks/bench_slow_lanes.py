"""Slow lanes: a healthy agent's hook-to-receiver latency while other endpoints hang.

    python benchmarks/bench_slow_lanes.py [--json] [--quick] [--rate R] [--hanging N]

One engine (SQLite, 64 in flight, 5 s attempt timeout). In the same run:

- baseline: the healthy agent alone, hook calls at ``--rate`` events/s;
- hostile: first ``--hanging`` endpoints that accept connections and never
  answer get a backlog of 200 events each, then the healthy agent gets the
  same load as the baseline, while those attempts hang.

The receiver (`_receiver.py`, another process) measures arrival - hook call.
Target: p99 under 50 ms with five endpoints that never answer.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from _common import AGENT, CONVERSATION, USER, agent_message, receiver, reset, stats
from _harness import emit, environment, parser
from webhook_plugin import Agent, PluginManager, WebhookPlugin, WebhookSettings
from webhook_plugin.delivery.engine import DeliveryConfig, DeliveryEngine
from webhook_plugin.storage.sqlite import SQLiteStore


@contextmanager
def black_hole() -> Iterator[str]:
    """Accepts connections, reads nothing, answers nothing."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    server.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join()
        server.close()
        for conn in held:
            conn.close()


def run(
    url: str, hole: str | None, hanging: int, rate: float, seconds: float, backend: str, tmp: str
) -> dict:
    async def main() -> dict:
        config = DeliveryConfig(
            allow_private_hosts=("127.0.0.1",),
            timeout=5.0,
            concurrency=64,
            per_endpoint_concurrency=16,
            poll_interval=0.05,
            settings_refresh=0,
            retry_schedule=(0, 60),
        )
        store = SQLiteStore(Path(tmp) / f"lanes-{time.monotonic_ns()}.db")
        async with DeliveryEngine(store, config) as engine:
            pm = PluginManager()
            pm.register(WebhookPlugin(engine))
            if hole is not None:
                for n in range(hanging):
                    agent = Agent(id=f"hang{n}")
                    await engine.save_settings(agent.id, WebhookSettings.validated(url=hole))
                    for _ in range(200):
                        pm.hook.on_agent_reply(
                            agent=agent,
                            conversation=CONVERSATION,
                            message=agent_message("z"),
                            in_reply_to=USER,
                        )
                await anyio.sleep(0.5)  # their attempts are hanging now
            await engine.save_settings(AGENT.id, WebhookSettings.validated(url=f"{url}/hook"))
            await anyio.to_thread.run_sync(reset, url)
            total = int(rate * seconds)
            start = time.perf_counter()
            for i in range(total):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
                message = agent_message(f"t={time.time():.6f} " + "y" * 580)
                pm.hook.on_agent_reply(
                    agent=AGENT, conversation=CONVERSATION, message=message, in_reply_to=USER
                )
            deadline = time.perf_counter() + 30
            while (s := await anyio.to_thread.run_sync(stats, url))["unique_ok"] < total:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"only {s['unique_ok']} of {total} delivered")
                await anyio.sleep(0.01)
            return s

    return anyio.run(main, backend=backend)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--hanging", type=int, default=5)
    args = p.parse_args()
    seconds = 2.0 if args.quick else 4.0
    rows = []
    with receiver() as url, black_hole() as hole, tempfile.TemporaryDirectory() as tmp:
        for backend in ("asyncio", "trio"):
            base = run(url, None, 0, args.rate, seconds, backend, tmp)
            hostile = run(url, hole, args.hanging, args.rate, seconds, backend, tmp)
            rows.append([backend, "healthy agent alone", base["p50_ms"], base["p99_ms"], "1.00"])
            rows.append(
                [
                    backend,
                    f"+ {args.hanging} endpoints that never answer",
                    hostile["p50_ms"],
                    hostile["p99_ms"],
                    f"{hostile['p99_ms'] / max(base['p99_ms'], 0.01):.2f}",
                ]
            )
    emit(
        args,
        f"bench_slow_lanes: {args.rate:,.0f} events/s for {seconds:g} s to a healthy agent, "
        f"5 s attempt timeout, 64 in flight ({environment()})",
        ["backend", "run", "p50 ms", "p99 ms", "p99 vs alone"],
        rows,
        {"target": "p99 < 50 ms with 5 endpoints that never answer"},
    )


if __name__ == "__main__":
    main()
