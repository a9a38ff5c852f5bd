"""A delivery worker process for the ordering test, killed with SIGKILL midway.

``python order_worker.py SPEC`` delivers what is due in the database SPEC
(``sqlite:PATH`` or ``postgres:SCHEMA``) until killed; prints READY once
running. Run with ``tests/`` on ``PYTHONPATH`` (for :mod:`helpers`).
"""

from __future__ import annotations

import sys

import anyio
import structlog

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

from helpers import POSTGRES_URL, config  # noqa: E402
from webhook_plugin import DeliveryEngine  # noqa: E402
from webhook_plugin.storage.base import Store  # noqa: E402

CFG = dict(timeout=0.5, retry_schedule=(0,) + (0.05,) * 40)


def store_of(spec: str) -> Store:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        from webhook_plugin.storage.sqlite import SQLiteStore

        return SQLiteStore(where)
    from webhook_plugin.storage.postgres import PostgresStore

    return PostgresStore(POSTGRES_URL, schema=where)


async def deliver(spec: str) -> None:
    async with DeliveryEngine(store_of(spec), config(**CFG)):
        print("READY", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(deliver, sys.argv[1])
