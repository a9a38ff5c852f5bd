"""The retention purge beside live delivery: does expiring a million payloads
hold up the events being delivered?

    python benchmarks/bench_purge.py [--json] [--rows N] [--rate R]

An engine on SQLite delivers to the loopback receiver of `_common.py`. The
log holds N delivered deliveries older than the retention (the contract's
message, 600-character answer, as bodies). Live hook calls come at R a second,
each payload carrying its hook-call time. Reported, in the same run: live
p50/p99 alone, then live p50/p99 while `purge_log` expires every old payload,
how long the purge took, and that the log still lists every delivery.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

from _common import AGENT, CONVERSATION, USER, agent_message, live, receiver, reset, stats
from _harness import emit, environment, parser
from webhook_plugin import PluginManager, WebhookPlugin, WebhookSettings
from webhook_plugin.delivery.engine import DeliveryConfig, DeliveryEngine
from webhook_plugin.events import WebhookEventType
from webhook_plugin.payloads import build_payload, encode
from webhook_plugin.storage.sqlite import SQLiteStore


def fill(path: Path, rows: int) -> None:
    """``rows`` delivered deliveries from 40 days ago, written straight to the file."""
    body = encode(
        build_payload(
            WebhookEventType.AGENT_USER_MESSAGE,
            agent=AGENT,
            conversation=CONVERSATION,
            message=agent_message("y" * 600),
            user_message=USER,
        )
    )
    old = time.time() - 40 * 86400
    conn = sqlite3.connect(path)
    for start in range(0, rows, 50_000):
        conn.executemany(
            "INSERT INTO deliveries (webhook_id, agent_id, event_type, body, created_at,"
            " status, attempts, updated_at) VALUES (?, 'bench', 'AGENT_USER_MESSAGE', ?, ?,"
            " 'succeeded', 1, ?)",
            [
                (f"msg_old_{i}", body, old + i / 1000, old)
                for i in range(start, min(rows, start + 50_000))
            ],
        )
        conn.commit()
    conn.close()


def run(url: str, tmp: str, rows: int, rate: float) -> dict:
    path = Path(tmp) / f"purge-{time.monotonic_ns()}.db"
    SQLiteStore(path).open()  # the tables
    fill(path, rows)

    async def main() -> dict:
        config = DeliveryConfig(
            allow_private_hosts=("127.0.0.1",), settings_refresh=0, retention=0
        )  # retention 0: no purge loop of its own; this run purges once, measured
        async with DeliveryEngine(SQLiteStore(path), config) as engine:
            await engine.save_settings("bench", WebhookSettings.validated(url=f"{url}/hook"))
            pm = PluginManager()
            pm.register(WebhookPlugin(engine))
            await anyio.to_thread.run_sync(reset, url)
            await live(pm, rate, 5, conversations=100)
            await anyio.sleep(0.5)
            alone = await anyio.to_thread.run_sync(stats, url)
            await anyio.to_thread.run_sync(reset, url)
            took: list[float] = []

            async def purge() -> None:
                started = time.perf_counter()
                took.append(await engine.purge_log(older_than=30 * 86400))
                took.append(time.perf_counter() - started)

            async with anyio.create_task_group() as tg:
                tg.start_soon(purge)
                await live(pm, rate, 5, conversations=100)
            await anyio.sleep(0.5)
            during = await anyio.to_thread.run_sync(stats, url)
            counts = await anyio.to_thread.run_sync(engine.store.count_deliveries)
            return {
                "alone": alone,
                "during": during,
                "expired": took[0],
                "seconds": took[1],
                "kept": counts["succeeded"],
            }

    return anyio.run(main)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--rate", type=float, default=200.0, help="live hook calls a second")
    args = p.parse_args()
    rows = 100_000 if args.quick else args.rows
    with receiver() as url, tempfile.TemporaryDirectory() as tmp:
        r = run(url, tmp, rows, args.rate)
    emit(
        args,
        f"bench_purge: {rows:,} delivered payloads older than the retention expired while"
        f" {args.rate:g} live events/s flow ({environment()})",
        ["phase", "p50 ms", "p99 ms", "p99 vs alone"],
        [
            ["live alone", r["alone"]["p50_ms"], r["alone"]["p99_ms"], "-"],
            [
                "live while purging",
                r["during"]["p50_ms"],
                r["during"]["p99_ms"],
                f"{r['during']['p99_ms'] / r['alone']['p99_ms']:.2f}x",
            ],
        ],
        {
            "payloads expired": f"{r['expired']:,} in {r['seconds']:.1f} s",
            "deliveries still in the log": f"{r['kept']:,}",
            "live events delivered during the purge": r["during"]["unique_ok"],
        },
    )


if __name__ == "__main__":
    main()
