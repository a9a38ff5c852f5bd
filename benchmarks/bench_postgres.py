"""PostgreSQL: the outbox, and delivery with 1, 2 and 4 worker processes.

    python benchmarks/bench_postgres.py [--json] [--events N] [--url postgresql://...]

Outbox: events per second durably stored by the PostgreSQL outbox (group
commit) at 1, 10 and 100 producers, against raw psycopg batched inserts
(1,000 rows per transaction) into the same table, in the same run.

Delivery: N events are queued first; then K `webhook-plugin worker`
processes start on the same database and deliver to the loopback receiver
(a raw asyncio server, another process). Timed from the workers' start until
the receiver has every event; SKIP LOCKED claims keep them from sending the
same delivery twice, and the duplicates are counted.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from _common import receiver, reset, stats
from _harness import emit, environment, parser
from bench_outbox import BODY, E, ours
from webhook_plugin.delivery.engine import DeliveryConfig, DeliveryEngine
from webhook_plugin.settings import WebhookSettings
from webhook_plugin.storage.postgres import PostgresStore, drop_schema

DEFAULT_URL = os.environ.get(
    "WEBHOOK_PLUGIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def raw_psycopg(url: str, schema: str, rows: int) -> float:
    import psycopg

    store = PostgresStore(url, schema=schema)
    store.open()
    store.close()
    now = time.time()
    data = [(f"raw_{i}_{now}", "agent", E.value, BODY, now, now, now) for i in range(rows)]
    with psycopg.connect(url, options=f"-c search_path={schema}") as conn:
        start = time.perf_counter()
        for i in range(0, rows, 1000):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO deliveries (webhook_id, agent_id, event_type, body, created_at,"
                    " next_attempt_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    data[i : i + 1000],
                )
        return rows / (time.perf_counter() - start)


async def outbox_pg(url: str, schema: str, producers: int, seconds: float) -> float:
    # bench_outbox's producers, on a PostgreSQL store instead of its SQLite file
    import bench_outbox

    original = bench_outbox.SQLiteStore
    bench_outbox.SQLiteStore = lambda _path: PostgresStore(url, schema=schema)  # type: ignore[assignment]
    try:
        return await ours(Path("unused"), producers, seconds)
    finally:
        bench_outbox.SQLiteStore = original  # type: ignore[assignment]


def queue(url: str, schema: str, target: str, n: int) -> None:
    async def main() -> None:
        config = DeliveryConfig(workers=False, settings_refresh=0)
        async with DeliveryEngine(PostgresStore(url, schema=schema), config) as engine:
            await engine.save_settings("agent", WebhookSettings.validated(url=f"{target}/hook"))
            tickets = [engine.enqueue("agent", E, BODY) for _ in range(n)]
            for t in tickets:
                await t

    anyio.run(main)


def deliver_with(
    url: str, schema: str, target: str, n: int, workers: int, tmp: str
) -> tuple[float, int]:
    config = Path(tmp) / f"workers-{workers}.toml"
    config.write_text(
        f'[runtime]\ndatabase = "{url}?schema={schema}"\n'
        '[webhook]\nallow_private_hosts = ["127.0.0.1"]\nconcurrency = 64\nper_endpoint_concurrency = 64\n'
        "poll_interval = 0.05\n"
    )
    reset(target)
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "webhook_plugin.cli",
                "--log-level",
                "warning",
                "worker",
                "--config",
                str(config),
            ],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        deadline = time.perf_counter() + 300
        while (s := stats(target))["unique_ok"] < n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {s['unique_ok']} of {n} delivered")
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    return n / elapsed, stats(target)["duplicate_ok"]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--url", default=DEFAULT_URL)
    args = p.parse_args()
    n = 2_000 if args.quick else args.events
    rounds = 1 if args.quick else min(args.rounds, 3)
    schema = f"bench_{os.getpid()}"
    out: dict[str, list[float]] = {}
    try:
        for r in range(rounds):
            out.setdefault("raw psycopg, 1000 rows per transaction", []).append(
                raw_psycopg(args.url, f"{schema}_raw{r}", n)
            )
            for producers in (1, 10, 100):
                value = anyio.run(
                    outbox_pg,
                    args.url,
                    f"{schema}_p{producers}_{r}",
                    producers,
                    1.0 if not args.quick else 0.5,
                )
                out.setdefault(f"outbox, {producers} producer(s) awaiting each event", []).append(
                    value
                )
        medians = {k: statistics.median(v) for k, v in out.items()}
        base = medians["raw psycopg, 1000 rows per transaction"]
        emit(
            args,
            f"bench_postgres outbox: 1 KiB events durably stored ({environment()}), median of {rounds} round(s)",
            ["writer", "events/s", "vs raw batched"],
            [[k, f"{v:,.0f}", f"{v / base:.0%}"] for k, v in medians.items()],
        )
        rows = []
        with receiver() as target, tempfile.TemporaryDirectory() as tmp:
            for workers in (1, 2, 4):
                s = f"{schema}_w{workers}"
                queue(args.url, s, target, n)
                rate, dups = deliver_with(args.url, s, target, n, workers, tmp)
                rows.append([workers, f"{rate:,.0f}", dups])
        one = float(rows[0][1].replace(",", ""))
        for row in rows:
            row.insert(2, f"{float(row[1].replace(',', '')) / one:.2f}x")
        emit(
            args,
            f"\nbench_postgres delivery: {n:,} queued events, K worker processes, 2 cores",
            ["workers", "events/s", "vs 1 worker", "duplicates"],
            rows,
        )
    finally:
        for suffix in (
            [f"_raw{r}" for r in range(rounds)]
            + [f"_p{p}_{r}" for p in (1, 10, 100) for r in range(rounds)]
            + [f"_w{w}" for w in (1, 2, 4)]
        ):
            drop_schema(args.url, schema + suffix)


if __name__ == "__main__":
    main()
