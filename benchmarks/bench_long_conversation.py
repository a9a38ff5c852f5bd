"""Message acknowledgements while long conversations are opened.

    python benchmarks/bench_long_conversation.py [--json] [--messages N] [--quick]

One `webhook-plugin serve` (SQLite, the default deployment) holds a
conversation of N user messages of 60 kB each (10,000 by default; each gets
the built-in AI's reply). Then, for 10 s, a client posts the contract's message
(`messageId`, contact) at a steady 100 a second, each in a conversation of its
own, and records how long each took to be acknowledged; first alone, then
while 5 other clients open the long conversation again and again, the
console's page and the API's JSON in turn.

Reported: the p50 and p99 of the acknowledgements alone and during the reads
(the ratio is the figure: same run, same server), the pages read, their size,
and serve's peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import receiver
from _deployments import TOKEN, Deployment, message
from _harness import emit, environment, parser

HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


async def seed(url: str, n: int) -> None:
    import aiohttp

    text = "x" * 60_000
    counter = iter(range(n))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for i in counter:
                body = {"conversationId": "long", "channel": "web", "text": f"{i} {text}"}
                async with session.post(
                    f"{url}/v1/agents/perf/messages", data=json.dumps(body), headers=HEADERS
                ) as r:
                    if r.status != 200:
                        raise RuntimeError(f"{r.status}: {await r.text()}")

        await asyncio.gather(*(worker() for _ in range(16)))


async def acks(url: str, seconds: float, rate: float, tag: str, readers: int) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    pages = [0, 0]  # count, bytes
    stop = asyncio.Event()
    auth = {"Authorization": HEADERS["Authorization"]}
    async with aiohttp.ClientSession() as session:

        async def post(i: int) -> None:
            started = time.perf_counter()
            async with session.post(
                f"{url}/v1/agents/perf/messages", data=message(tag, i), headers=HEADERS
            ) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {await r.text()}")
            latencies.append(time.perf_counter() - started)

        async def reader(n: int) -> None:
            paths = ["/inbox/long", "/v1/inbox/conversations/long"]
            while not stop.is_set():
                async with session.get(url + paths[n % 2], headers=auth) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{r.status} on {paths[n % 2]}")
                pages[0] += 1
                pages[1] += len(body)
                n += 1

        tasks = [asyncio.create_task(reader(k)) for k in range(readers)]
        posts = []
        start = time.perf_counter()
        for i in range(int(seconds * rate)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            posts.append(asyncio.create_task(post(i)))
        await asyncio.gather(*posts)
        stop.set()
        await asyncio.gather(*tasks)
    ordered = sorted(latencies)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
        "max_ms": 1000 * ordered[-1],
        "pages": pages[0],
        "page_kib": pages[1] / max(1, pages[0]) / 1024,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=10_000)
    args = p.parse_args()
    n = 500 if args.quick else args.messages
    seconds = 3.0 if args.quick else 10.0
    with receiver() as rx, tempfile.TemporaryDirectory() as tmp:
        d = Deployment("sqlite", rx, Path(tmp))
        try:
            started = time.perf_counter()
            asyncio.run(seed(d.urls[0], n))
            seeded = time.perf_counter() - started
            alone = asyncio.run(acks(d.urls[0], seconds, 100, "alone", readers=0))
            during = asyncio.run(acks(d.urls[0], seconds, 100, "during", readers=5))
            rss = d.rss_mib()
        finally:
            d.stop()
    rows = [
        [
            "alone",
            f"{alone['p50_ms']:.1f}",
            f"{alone['p99_ms']:.1f}",
            f"{alone['max_ms']:.1f}",
            "",
            "",
        ],
        [
            "5 clients opening it",
            f"{during['p50_ms']:.1f}",
            f"{during['p99_ms']:.1f}",
            f"{during['max_ms']:.1f}",
            f"{during['pages']:,}",
            f"{during['page_kib']:,.0f}",
        ],
    ]
    emit(
        args,
        f"bench_long_conversation: a conversation of {n:,} messages of 60 kB (seeded in"
        f" {seeded:.0f} s), acks of 100 msg/s for {seconds:g} s ({environment()});"
        f" p99 during / alone: {during['p99_ms'] / alone['p99_ms']:.2f}x; serve peak RSS"
        f" {rss:.0f} MiB",
        ["while", "ack p50 ms", "ack p99 ms", "ack max ms", "pages read", "KiB a page"],
        rows,
    )


if __name__ == "__main__":
    main()
