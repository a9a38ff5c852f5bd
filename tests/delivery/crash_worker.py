"""A process that the crash test kills with SIGKILL.

``produce DB URL N IDS_FILE``: queue N events, write their webhook ids to
IDS_FILE once durably stored, print READY, then deliver until killed.
``drain DB URL``: deliver until nothing is pending, then exit.

Run by ``test_crash.py`` with ``tests/`` on ``PYTHONPATH`` (for :mod:`helpers`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import structlog

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

# tests/ is on the PYTHONPATH the crash test gives this script
from helpers import config, pipeline, reply  # noqa: E402
from webhook_plugin import DeliveryEngine, WebhookSettings  # noqa: E402
from webhook_plugin.storage.sqlite import SQLiteStore  # noqa: E402

CFG = dict(
    timeout=0.5,
    per_endpoint_concurrency=4,
    concurrency=4,
    retry_schedule=(0, 0.05, 0.05, 0.05, 0.05),
)


async def produce(db: str, url: str, n: int, ids_file: str) -> None:
    async with DeliveryEngine(SQLiteStore(db), config(**CFG)) as engine:
        await engine.save_settings("support", WebhookSettings.validated(url=url))
        tickets = reply(pipeline(engine), n)
        for t in tickets:
            await t
        Path(ids_file).write_text("\n".join(t.webhook_id for t in tickets))
        print("READY", flush=True)
        await anyio.sleep_forever()


async def drain(db: str) -> None:
    async with DeliveryEngine(SQLiteStore(db), config(**CFG)) as engine:
        with anyio.fail_after(60):
            while (await anyio.to_thread.run_sync(engine.store.count_deliveries))["pending"]:
                await anyio.sleep(0.1)
    print("DRAINED", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "produce":
        anyio.run(produce, sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        anyio.run(drain, sys.argv[2], backend=sys.argv[3] if len(sys.argv) > 3 else "asyncio")
