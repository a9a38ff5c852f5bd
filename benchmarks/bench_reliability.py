"""At least once, counted: N events through a loopback receiver that fails 10 %.

    python benchmarks/bench_reliability.py [--events 10000] [--fail-rate 0.1] [--backend asyncio|trio]

Every event goes through `pm.hook.on_agent_reply`, the SQLite outbox and the
dispatcher; the receiver (another process) answers 500 to a random 10 % of
requests and counts, per webhook-id, the requests it answered 2xx. Lost = events
never answered 2xx; duplicates = 2xx answers beyond the first for an id.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio
import anyio.lowlevel

from _common import AGENT, CONVERSATION, USER, agent_message, receiver, reset, stats
from _harness import emit, environment, parser
from webhook_plugin import PluginManager, WebhookPlugin, WebhookSettings
from webhook_plugin.delivery.engine import DeliveryConfig, DeliveryEngine
from webhook_plugin.storage.sqlite import SQLiteStore


def run(url: str, n: int, backend: str, tmp: str) -> dict:
    async def main() -> dict:
        config = DeliveryConfig(
            allow_private_hosts=("127.0.0.1",),
            poll_interval=0.05,
            retry_schedule=(0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8),
        )
        async with DeliveryEngine(SQLiteStore(Path(tmp) / f"rel-{backend}.db"), config) as engine:
            await engine.save_settings("bench", WebhookSettings.validated(url=f"{url}/hook"))
            pm = PluginManager()
            pm.register(WebhookPlugin(engine))
            await anyio.to_thread.run_sync(reset, url)
            message = agent_message("y" * 600)
            start = time.perf_counter()
            tickets = []
            for i in range(n):
                tickets += pm.hook.on_agent_reply(
                    agent=AGENT, conversation=CONVERSATION, message=message, in_reply_to=USER
                )
                if i % 500 == 0:
                    await anyio.lowlevel.checkpoint()
            for t in tickets:
                await t
            queued = time.perf_counter() - start
            deadline = time.perf_counter() + 300
            while True:
                counts = await anyio.to_thread.run_sync(engine.store.count_deliveries)
                if counts["pending"] == 0 or time.perf_counter() > deadline:
                    break
                await anyio.sleep(0.1)
            elapsed = time.perf_counter() - start
            s = await anyio.to_thread.run_sync(stats, url)
            return {
                "events": n,
                "queued_s": round(queued, 2),
                "elapsed_s": round(elapsed, 2),
                "requests": s["requests"],
                "answered_500": s["failed"],
                "delivered": s["unique_ok"],
                "lost": n - s["unique_ok"],
                "duplicates": s["duplicate_ok"],
                "failed_in_log": counts["failed"],
            }

    return anyio.run(main, backend=backend)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--fail-rate", type=float, default=0.1)
    p.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    args = p.parse_args()
    n = 2_000 if args.quick else args.events
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    rows = []
    with receiver(args.fail_rate) as url, tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            r = run(url, n, backend, tmp)
            rows.append(
                [
                    backend,
                    r["events"],
                    r["requests"],
                    r["answered_500"],
                    r["delivered"],
                    r["lost"],
                    r["duplicates"],
                    r["failed_in_log"],
                    r["elapsed_s"],
                ]
            )
    emit(
        args,
        f"bench_reliability: {n:,} events, receiver fails {args.fail_rate:.0%} at random ({environment()})",
        [
            "backend",
            "events",
            "requests",
            "answered 500",
            "delivered",
            "lost",
            "duplicates",
            "failed (log)",
            "seconds",
        ],
        rows,
    )
    if any(row[5] for row in rows):
        raise SystemExit("events were lost")


if __name__ == "__main__":
    main()
