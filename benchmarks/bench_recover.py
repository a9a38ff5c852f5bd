"""Recover while live traffic flows: does a big recovery starve live events?

    python benchmarks/bench_recover.py [--json] [--failed N] [--rate R] [--requeue-rate Q]

An engine on SQLite delivers to the loopback receiver of `_common.py`. N
deliveries of the contract's message (`AGENT_USER_MESSAGE`, 600-character
answer), created over the last two hours, are stored as failed (their
endpoint was down). Live hook calls come at R a second; each payload carries
its hook-call time, so the receiver measures hook-to-arrival. Reported, in
the same run:

- live p50/p99 with nothing else going on (the baseline);
- live p50/p99 while `recover` (the last two hours) sends the N back at
  `requeue_rate` Q a second, and the same recover asked a second time at once;
- when the recovery was done, and how many webhooks arrived twice (none may:
  the second recover must find them pending and leave them).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import anyio

from _common import AGENT, CONVERSATION, USER, agent_message, live, receiver, reset, stats
from _harness import emit, environment, parser
from webhook_plugin import PluginManager, WebhookPlugin, WebhookSettings
from webhook_plugin.delivery.engine import DeliveryConfig, DeliveryEngine
from webhook_plugin.events import WebhookEventType
from webhook_plugin.payloads import build_payload, encode, new_webhook_id
from webhook_plugin.storage.base import NewDelivery
from webhook_plugin.storage.sqlite import SQLiteStore


def run(url: str, tmp: str, failed: int, rate: float, seconds: float, requeue: float) -> dict:
    async def main() -> dict:
        config = DeliveryConfig(
            allow_private_hosts=("127.0.0.1",),
            settings_refresh=0,
            requeue_rate=requeue,
            retry_schedule=(0, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        )
        store = SQLiteStore(Path(tmp) / f"recover-{time.monotonic_ns()}.db")
        async with DeliveryEngine(store, config) as engine:
            await engine.save_settings("bench", WebhookSettings.validated(url=f"{url}/hook"))
            now = time.time()
            body = encode(
                build_payload(
                    WebhookEventType.AGENT_USER_MESSAGE,
                    agent=AGENT,
                    conversation=CONVERSATION,
                    message=agent_message("y" * 600),
                    user_message=USER,
                )
            )
            old = [
                NewDelivery(
                    webhook_id=new_webhook_id(),
                    agent_id="bench",
                    event_type=WebhookEventType.AGENT_USER_MESSAGE,
                    body=body,
                    created_at=now - 7200 + i * 7000 / failed,
                    next_attempt_at=now + 86400,  # not due: failed below, as an outage left them
                    conversation_id=f"old_{i % 1000}",
                )
                for i in range(failed)
            ]
            await anyio.to_thread.run_sync(store.insert_deliveries, old)
            with store.transaction() as conn:
                store.execute(
                    conn,
                    "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL,"
                    " attempts = 10, last_error = 'http_503'",
                )
            pm = PluginManager()
            pm.register(WebhookPlugin(engine))
            await anyio.to_thread.run_sync(reset, url)
            await live(pm, rate, seconds)
            await anyio.sleep(1)
            before = await anyio.to_thread.run_sync(stats, url)
            await anyio.to_thread.run_sync(reset, url)
            started = time.perf_counter()
            first = await engine.recover("bench", since=now - 7300, until=now)
            second = await engine.recover("bench", since=now - 7300, until=now)
            await live(pm, rate, seconds)
            during = await anyio.to_thread.run_sync(stats, url)
            live_total = int(rate * seconds)
            while (await anyio.to_thread.run_sync(stats, url))["unique_ok"] < failed + live_total:
                await anyio.sleep(0.1)
            done = time.perf_counter() - started
            after = await anyio.to_thread.run_sync(stats, url)
            return {
                "before": before,
                "during": during,
                "queued": (first, second),
                "done_s": done,
                "duplicates": after["duplicate_ok"],
            }

    return anyio.run(main)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--failed", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=200.0, help="live hook calls a second")
    p.add_argument("--requeue-rate", type=float, default=100.0)
    args = p.parse_args()
    failed = 2_000 if args.quick else args.failed
    seconds = 3 if args.quick else 8
    rounds = 1 if args.quick else min(args.rounds, 3)
    results = []
    with receiver() as url, tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            results.append(run(url, tmp, failed, args.rate, seconds, args.requeue_rate))

    def med(phase: str, key: str) -> float:
        return statistics.median(r[phase][key] for r in results)

    rows = [
        ["live alone", med("before", "p50_ms"), med("before", "p99_ms"), "-"],
        [
            f"live while recovering {failed:,}",
            med("during", "p50_ms"),
            med("during", "p99_ms"),
            f"{med('during', 'p99_ms') / med('before', 'p99_ms'):.2f}x",
        ],
    ]
    last = results[-1]
    emit(
        args,
        f"bench_recover: {failed:,} failed deliveries over 2 h recovered at"
        f" {args.requeue_rate:g}/s while {args.rate:g} live events/s flow ({environment()}),"
        f" median of {rounds} round(s)",
        ["phase", "p50 ms", "p99 ms", "p99 vs alone"],
        rows,
        {
            "recover queued (first, second call)": last["queued"],
            "all recovered and live delivered after (s)": round(
                statistics.median(r["done_s"] for r in results), 1
            ),
            "webhooks that arrived twice": max(r["duplicates"] for r in results),
        },
    )


if __name__ == "__main__":
    main()
