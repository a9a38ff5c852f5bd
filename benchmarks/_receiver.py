"""A fast webhook receiver for the benchmarks: a raw asyncio server, one process.

    python benchmarks/_receiver.py PORT [FAIL_RATE]

Answers every POST 200 (or 500, for a FAIL_RATE share of them), keeps
connections alive, counts successful deliveries per webhook-id (so the caller
can count lost and duplicated events), and measures hook-to-receiver latency
when the body carries "t=<unix time>". GET /stats answers the counters as
JSON; GET /reset clears them. It prints READY once listening.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import re
import statistics
import sys
import time

FAIL_RATE = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
T_MARK = re.compile(rb"t=(\d+\.\d+)")


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0
        self.ok_ids: collections.Counter[bytes] = collections.Counter()
        self.latencies: list[float] = []

    def answer(self) -> bytes:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return json.dumps(
            {
                "requests": self.requests,
                "failed": self.failed,
                "ok": sum(self.ok_ids.values()),
                "unique_ok": len(self.ok_ids),
                "duplicate_ok": sum(c - 1 for c in self.ok_ids.values()),
                "p50_ms": pct(0.5),
                "p99_ms": pct(0.99),
                "mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
            }
        ).encode()


STATS = Stats()
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
FAIL = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nfail"


class Receiver(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        global STATS
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            length = 0
            webhook_id = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"webhook-id":
                    webhook_id = value.strip()
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            if head.startswith(b"GET /stats"):
                payload = STATS.answer()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(payload)).encode()
                    + b"\r\n\r\n"
                    + payload
                )
                continue
            if head.startswith(b"GET /reset"):
                STATS = Stats()
                self.transport.write(OK)
                continue
            STATS.requests += 1
            # a conversation whose events always fail (its head never gets through)
            if (FAIL_RATE and random.random() < FAIL_RATE) or b'"conv_stuck"' in body:
                STATS.failed += 1
                self.transport.write(FAIL)
                continue
            if webhook_id is not None:
                STATS.ok_ids[webhook_id] += 1
            mark = T_MARK.search(body)
            if mark:
                STATS.latencies.append(time.time() - float(mark[1]))
            self.transport.write(OK)


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
