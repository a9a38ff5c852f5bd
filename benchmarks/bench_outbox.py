"""Outbox: events per second durably stored, against raw sqlite3 on the same disk.

    python benchmarks/bench_outbox.py [--json] [--backend asyncio|trio]

Each producer queues an event and awaits its ticket (durably stored) before
queuing the next, as the reference runtime does per chat message; with many
producers the outbox commits them in shared transactions (group commit).
"burst" is the hook path: one producer queues without waiting, then awaits all.
The baseline, in the same process on the same file system, is raw `sqlite3`
inserting the same 1 KiB rows into the same table with the same pragmas
(WAL, synchronous=FULL): batched, 1,000 rows per transaction, and one row per
transaction.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from _harness import emit, environment, parser
from webhook_plugin.delivery.engine import DeliveryConfig, DeliveryEngine
from webhook_plugin.events import WebhookEventType
from webhook_plugin.storage.sqlite import SQLiteStore

BODY = os.urandom(512).hex().encode()  # 1 KiB
E = WebhookEventType.AGENT_USER_MESSAGE


def raw_sqlite(path: Path, rows: int, per_tx: int) -> float:
    store = SQLiteStore(path)
    store.open()  # same schema and pragmas
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    now = time.time()
    data = [(f"raw_{per_tx}_{i}", "agent", E.value, BODY, now, now, now) for i in range(rows)]
    start = time.perf_counter()
    for i in range(0, rows, per_tx):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO deliveries (webhook_id, agent_id, event_type, body, created_at,"
            " next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            data[i : i + per_tx],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return rows / elapsed


async def ours(path: Path, producers: int, seconds: float, burst: int = 0) -> float:
    engine = DeliveryEngine(SQLiteStore(path), DeliveryConfig(workers=False, settings_refresh=0))
    async with engine:
        if burst:
            start = time.perf_counter()
            tickets = [engine.enqueue("agent", E, BODY) for _ in range(burst)]
            for t in tickets:
                await t
            return burst / (time.perf_counter() - start)
        stored = 0
        deadline = time.perf_counter() + seconds

        async def producer() -> None:
            nonlocal stored
            while time.perf_counter() < deadline:
                await engine.enqueue("agent", E, BODY)
                stored += 1

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(producers):
                tg.start_soon(producer)
        return stored / (time.perf_counter() - start)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = p.parse_args()
    rounds = 3 if args.quick else min(args.rounds, 5)
    seconds = 0.5 if args.quick else 1.5
    rows = 5_000 if args.quick else 20_000
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        for r in range(rounds):

            def fresh(name: str, r: int = r) -> Path:
                return Path(tmp) / f"{name}-{r}.db"

            results.setdefault("raw sqlite3, 1000 rows per transaction", []).append(
                raw_sqlite(fresh("raw"), rows, 1000)
            )
            results.setdefault("raw sqlite3, 1 row per transaction", []).append(
                raw_sqlite(fresh("raw1"), rows // 10, 1)
            )
            for producers in (1, 10, 100):
                value = anyio.run(
                    ours, fresh(f"p{producers}"), producers, seconds, backend=args.backend
                )
                results.setdefault(
                    f"outbox, {producers} producer(s) awaiting each event", []
                ).append(value)
            value = anyio.run(lambda: ours(fresh("burst"), 1, 0, burst=rows), backend=args.backend)
            results.setdefault("outbox, burst (hook path, then await all)", []).append(value)
    medians = {k: statistics.median(v) for k, v in results.items()}
    base = medians["raw sqlite3, 1000 rows per transaction"]
    rows_out = [[k, f"{v:,.0f}", f"{v / base:.0%}"] for k, v in medians.items()]
    emit(
        args,
        f"bench_outbox: 1 KiB events durably stored, SQLite WAL synchronous=FULL, {args.backend} ({environment()}), median of {rounds} rounds",
        ["writer", "events/s", "vs raw batched"],
        rows_out,
        {"target": "outbox >= 60% of raw batched inserts"},
    )


if __name__ == "__main__":
    main()
