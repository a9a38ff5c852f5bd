"""Delivery: events per second end to end, and hook-to-receiver latency.

    python benchmarks/bench_delivery.py [--json] [--events N] [--concurrency C]

The receiver is a raw asyncio server in another process (`_receiver.py`).
In the same run, against the same receiver, with the same body and the same
number in flight:

- bare aiohttp: a ClientSession loop posting the bodies (asyncio only);
- bare httpx: an AsyncClient loop (asyncio);
- a bare h11 loop over anyio streams (asyncio and trio);
- our HTTP client alone (`Http11Client`, the network guard included), asyncio and trio;
- webhook-plugin end to end: `pm.hook.on_agent_reply` for every event, the
  SQLite outbox, the dispatcher, signing, the client, the delivery log;
  timed from the first hook call until the receiver has every event;
- the engine alone: the same with a client that answers 200 at once, no
  network: what the engine's own work (hooks, outbox, claims, signing,
  results) allows, on the one core the receiver leaves it.

Latency: hook calls at half the measured end-to-end rate for a few seconds,
each payload carrying its hook-call time; the receiver measures arrival - call.

Order: the same end to end with the events spread over 1,000 conversations,
with `ordering = "none"` and `"conversation"`; and the latency of healthy
ordered conversations while one conversation's head keeps failing.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import msgspec

from _common import AGENT, CONVERSATION, USER, agent_message, receiver, reset, stats
from _harness import emit, environment, parser
from webhook_plugin import PluginManager, WebhookPlugin, WebhookSettings
from webhook_plugin.delivery.client import Http11Client, Response
from webhook_plugin.delivery.engine import DeliveryConfig, DeliveryEngine
from webhook_plugin.delivery.netguard import NetworkGuard
from webhook_plugin.events import WebhookEventType
from webhook_plugin.payloads import build_payload, encode
from webhook_plugin.storage.sqlite import SQLiteStore

BODY = encode(
    build_payload(
        WebhookEventType.AGENT_USER_MESSAGE,
        agent=AGENT,
        conversation=CONVERSATION,
        message=agent_message("y" * 600),
        user_message=USER,
    )
)
HEADERS = [("content-type", "application/json"), ("webhook-id", "msg_bench")]


def bare_aiohttp(url: str, n: int, c: int) -> float:
    import aiohttp

    async def main() -> float:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:

            async def worker(count: int) -> None:
                for _ in range(count):
                    async with session.post(f"{url}/hook", data=BODY, headers=dict(HEADERS)) as r:
                        await r.read()

            start = time.perf_counter()
            await asyncio.gather(*(worker(n // c) for _ in range(c)))
            return (n // c * c) / (time.perf_counter() - start)

    return asyncio.run(main())


def bare_httpx(url: str, n: int, c: int) -> float:
    import httpx

    async def main() -> float:
        limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
        async with httpx.AsyncClient(limits=limits) as client:

            async def worker(count: int) -> None:
                for _ in range(count):
                    (await client.post(f"{url}/hook", content=BODY, headers=dict(HEADERS))).read()

            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(c):
                    tg.start_soon(worker, n // c)
            return (n // c * c) / (time.perf_counter() - start)

    return anyio.run(main)


def bare_h11_loop(url: str, n: int, c: int, backend: str) -> float:
    """h11 over anyio TCP streams, one kept-alive connection per worker (h11
    comes with httpx)."""
    import h11

    port = int(url.rsplit(":", 1)[1])

    async def main() -> float:
        async def worker(count: int) -> None:
            stream = await anyio.connect_tcp("127.0.0.1", port)
            conn = h11.Connection(h11.CLIENT)
            for _ in range(count):
                headers = [("host", "127.0.0.1"), ("content-length", str(len(BODY))), *HEADERS]
                await stream.send(
                    conn.send(h11.Request(method="POST", target="/hook", headers=headers))
                    + conn.send(h11.Data(data=BODY))
                    + conn.send(h11.EndOfMessage())
                )
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive(65536))
                    elif isinstance(event, h11.EndOfMessage):
                        break
                conn.start_next_cycle()
            await stream.aclose()

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(c):
                tg.start_soon(worker, n // c)
        return (n // c * c) / (time.perf_counter() - start)

    return anyio.run(main, backend=backend)


def bare_client(url: str, n: int, c: int, backend: str) -> float:
    async def main() -> float:
        client = Http11Client(NetworkGuard(["127.0.0.1"]), user_agent="bench")

        async def worker(count: int) -> None:
            for _ in range(count):
                await client.post(f"{url}/hook", HEADERS, BODY, timeout=10)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(c):
                tg.start_soon(worker, n // c)
        elapsed = time.perf_counter() - start
        await client.aclose()
        return (n // c * c) / elapsed

    return anyio.run(main, backend=backend)


class _AnswersAtOnce:
    """A client that answers 200 without a network: what is left is the engine's
    own work (hooks, outbox, claims, signing, results)."""

    def __init__(self, expected: int) -> None:
        self.left, self.done = expected, anyio.Event()

    async def post(self, url: str, headers: object, body: bytes, **kw: object) -> Response:
        await anyio.lowlevel.checkpoint()
        self.left -= 1
        if self.left == 0:
            self.done.set()
        return Response(200, {"content-type": "text/plain", "content-length": "2"}, b"ok")

    async def aclose(self) -> None:
        pass


def engine_alone(n: int, c: int, backend: str, tmp: str) -> float:
    async def main() -> float:
        client = _AnswersAtOnce(n)
        async with _engine(tmp, c, client) as engine:
            await engine.save_settings(
                "bench", WebhookSettings.validated(url="http://127.0.0.1:9/hook")
            )
            pm = PluginManager()
            pm.register(WebhookPlugin(engine))
            message = agent_message("y" * 600)
            start = time.perf_counter()
            for i in range(n):
                pm.hook.on_agent_reply(
                    agent=AGENT, conversation=CONVERSATION, message=message, in_reply_to=USER
                )
                if i % 500 == 0:
                    await anyio.lowlevel.checkpoint()
            with anyio.fail_after(120):
                await client.done.wait()
            return n / (time.perf_counter() - start)

    return anyio.run(main, backend=backend)


def _engine(tmp: str, c: int, client: object = None) -> DeliveryEngine:
    config = DeliveryConfig(
        allow_private_hosts=("127.0.0.1",),
        concurrency=c,
        per_endpoint_concurrency=c,
        poll_interval=1.0,
        settings_refresh=0,
        retry_schedule=(0, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    )
    store = SQLiteStore(Path(tmp) / f"bench-{time.monotonic_ns()}.db")
    return DeliveryEngine(store, config, client=client)  # type: ignore[arg-type]


async def _wait_for(url: str, count: int, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while (await anyio.to_thread.run_sync(stats, url))["unique_ok"] < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {(await anyio.to_thread.run_sync(stats, url))} delivered")
        await anyio.sleep(0.01)


def end_to_end(
    url: str,
    n: int,
    c: int,
    backend: str,
    tmp: str,
    *,
    conversations: int = 1,
    ordering: str = "none",
) -> float:
    async def main() -> float:
        async with _engine(tmp, c) as engine:
            await engine.save_settings(
                "bench", WebhookSettings.validated(url=f"{url}/hook", ordering=ordering)
            )
            pm = PluginManager()
            pm.register(WebhookPlugin(engine))
            message = agent_message("y" * 600)
            chats = [
                msgspec.structs.replace(CONVERSATION, id=f"conv_{i}") for i in range(conversations)
            ]
            await anyio.to_thread.run_sync(reset, url)
            start = time.perf_counter()
            for _ in range(n):
                pm.hook.on_agent_reply(
                    agent=AGENT, conversation=chats[_ % conversations], message=message,
                    in_reply_to=USER,
                )  # fmt: skip
                if _ % 500 == 0:
                    await anyio.lowlevel.checkpoint()  # a pipeline yields between chat turns
            await _wait_for(url, n, 120)
            return n / (time.perf_counter() - start)

    return anyio.run(main, backend=backend)


def latency(
    url: str,
    rate: float,
    seconds: float,
    c: int,
    backend: str,
    tmp: str,
    *,
    conversations: int = 1,
    ordering: str = "none",
    stuck: bool = False,
) -> dict:
    """Hook-to-receiver latency; with ``stuck``, one more conversation's events
    (one in ten) keep failing meanwhile, its head blocking only itself."""

    async def main() -> dict:
        async with _engine(tmp, c) as engine:
            await engine.save_settings(
                "bench", WebhookSettings.validated(url=f"{url}/hook", ordering=ordering)
            )
            pm = PluginManager()
            pm.register(WebhookPlugin(engine))
            chats = [
                msgspec.structs.replace(CONVERSATION, id=f"conv_{i}") for i in range(conversations)
            ]
            failing = msgspec.structs.replace(CONVERSATION, id="conv_stuck")
            await anyio.to_thread.run_sync(reset, url)
            total = int(rate * seconds)
            start = time.perf_counter()
            for i in range(total):
                target = start + i / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
                message = agent_message(f"t={time.time():.6f} " + "y" * 580)
                pm.hook.on_agent_reply(
                    agent=AGENT, conversation=chats[i % conversations], message=message,
                    in_reply_to=USER,
                )  # fmt: skip
                if stuck and i % 10 == 0:
                    pm.hook.on_agent_reply(
                        agent=AGENT, conversation=failing, message=agent_message("never"),
                        in_reply_to=USER,
                    )  # fmt: skip
            await _wait_for(url, total, 60)
            return await anyio.to_thread.run_sync(stats, url)

    return anyio.run(main, backend=backend)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    rounds = 1 if args.quick else min(args.rounds, 3)
    n = 2_000 if args.quick else args.events
    c = args.concurrency
    results: dict[str, list[float]] = {}
    with receiver() as url, tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            results.setdefault("bare aiohttp loop (asyncio)", []).append(bare_aiohttp(url, n, c))
            results.setdefault("bare httpx loop (asyncio)", []).append(
                bare_httpx(url, max(n // 5, c), c)
            )
            for backend in ("asyncio", "trio"):
                results.setdefault(f"bare h11 loop ({backend})", []).append(
                    bare_h11_loop(url, n, c, backend)
                )
                results.setdefault(f"Http11Client alone ({backend})", []).append(
                    bare_client(url, n, c, backend)
                )
                results.setdefault(f"webhook-plugin end to end ({backend})", []).append(
                    end_to_end(url, n, c, backend, tmp)
                )
                results.setdefault(f"the engine alone, no network ({backend})", []).append(
                    engine_alone(n, c, backend, tmp)
                )
            for backend in ("asyncio", "trio"):
                for ordering in ("none", "conversation"):
                    results.setdefault(
                        f"end to end, 1,000 conversations, ordering={ordering} ({backend})", []
                    ).append(
                        end_to_end(url, n, c, backend, tmp, conversations=1000, ordering=ordering)
                    )
        medians = {k: statistics.median(v) for k, v in results.items()}
        base = medians["bare aiohttp loop (asyncio)"]
        rows = [[k, f"{v:,.0f}", f"{v / base:.0%}"] for k, v in medians.items()]
        lat_rows = []
        for backend in ("asyncio", "trio"):
            rate = medians[f"webhook-plugin end to end ({backend})"] / 2
            s = latency(url, rate, 2 if args.quick else 4, c, backend, tmp)
            lat_rows.append([backend, "1", f"{rate:,.0f}", s["p50_ms"], s["p99_ms"]])
        order_rows = []
        for backend in ("asyncio", "trio"):
            for ordering in ("none", "conversation"):
                key = f"end to end, 1,000 conversations, ordering={ordering} ({backend})"
                ratio = medians[key] / medians[key.replace("=conversation", "=none")]
                order_rows.append([backend, ordering, f"{medians[key]:,.0f}", f"{ratio:.0%}"])
            rate = medians[f"end to end, 1,000 conversations, ordering=none ({backend})"] / 4
            for stuck in (False, True):
                s = latency(
                    url, rate, 2 if args.quick else 4, c, backend, tmp, conversations=1000,
                    ordering="conversation", stuck=stuck,
                )  # fmt: skip
                label = "1,000 ordered" + (" + one whose head keeps failing" if stuck else "")
                lat_rows.append([backend, label, f"{rate:,.0f}", s["p50_ms"], s["p99_ms"]])
    emit(
        args,
        f"bench_delivery: {n:,} events of {len(BODY)} bytes, {c} in flight, loopback receiver in another process ({environment()}), median of {rounds} round(s)",
        ["sender", "requests/s", "vs bare aiohttp"],
        rows,
    )
    emit(
        args,
        "\nordered beside unordered: 1,000 conversations, same events",
        ["backend", "ordering", "events/s", "vs unordered"],
        order_rows,
        {"target": "ordered >= 70% of unordered"},
    )
    emit(
        args,
        "\nhook-to-receiver latency (1 conversation: half the end-to-end rate; 1,000: a quarter)",
        ["backend", "conversations", "events/s offered", "p50 ms", "p99 ms"],
        lat_rows,
        {"targets": "end to end >= 80% of bare aiohttp; p99 < 50 ms at half load"},
    )


if __name__ == "__main__":
    main()
