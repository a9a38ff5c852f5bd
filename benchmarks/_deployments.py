"""`bench_api.py --setups`: the message route on each way users deploy the runtime.

- ``sqlite``: one `webhook-plugin serve` (the embedded default: on two cores or
  more it delivers from a worker process of its own).
- ``sqlite-inline``: one `serve --inline-workers` (delivery in its own process).
- ``sqlite-split``: `serve --no-workers` and `webhook-plugin worker` on the same file.
- ``postgres``: one `serve` on PostgreSQL (with its worker process).
- ``postgres-inline``: one `serve --inline-workers` on PostgreSQL.
- ``postgres-2x2``: two `serve --no-workers` and two `worker` processes on one
  PostgreSQL database; the client spreads its requests over both servers.

Each setup: acknowledged msg/s at full load (32 in flight), delivered ev/s,
send-to-arrival p50/p99 at full load and at half the acknowledged rate
(paced), and the serve processes' peak RSS (with their worker processes').
With ``--long K``, the sqlite setup also posts K times as many messages and
reports its RSS after 1x and after Kx, to show there is no growth per message.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _common import reset, stats

TOKEN = "bench-token-0123456789abcdef"
POSTGRES_URL = os.environ.get(
    "WEBHOOK_PLUGIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SETUPS = {
    # name: (database, serves, workers, serve's options)
    "sqlite": ("sqlite", 1, 0, ()),
    "sqlite-inline": ("sqlite", 1, 0, ("--inline-workers",)),
    "sqlite-split": ("sqlite", 1, 1, ()),
    "postgres": ("postgres", 1, 0, ()),
    "postgres-inline": ("postgres", 1, 0, ("--inline-workers",)),
    "postgres-2x2": ("postgres", 2, 2, ()),
}


def postgres_up() -> bool:
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except Exception:
        return False
    return True


def write_config(
    tmp: Path, receiver_url: str, database: str | None = None, ordering: str = "none"
) -> Path:
    """The config every bench server runs: agent `perf` with a webhook to the
    receiver, an API token; a fresh SQLite file unless ``database`` is given."""
    database = database or f"sqlite:///{tmp / f'api-{time.monotonic_ns()}.db'}"
    path = tmp / f"setup-{time.monotonic_ns()}.toml"
    path.write_text(
        f"""
[runtime]
plugins = ["webhook_plugin"]
database = "{database}"
api_token = "{TOKEN}"

[webhook]
allow_private_hosts = ["127.0.0.1"]

[[agents]]
id = "perf"
name = "Perf Bot"

[agents.webhook]
url = "{receiver_url}/hook"
ordering = "{ordering}"
"""
    )
    return path


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until ``url``/healthz answers 200; RuntimeError if ``proc`` exits first or
    it takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not start") from None
            time.sleep(0.1)


class Deployment:
    """The processes of one setup, started from the `webhook-plugin` command."""

    def __init__(self, setup: str, receiver_url: str, tmp: Path, ordering: str = "none") -> None:
        from _common import free_port

        kind, serves, workers, options = SETUPS[setup]
        self.schema = None
        database = None
        if kind == "postgres":
            self.schema = f"bench_api_{os.getpid()}_{time.monotonic_ns() % 10**9}"
            database = f"{POSTGRES_URL}?schema={self.schema}"
        config = write_config(tmp, receiver_url, database, ordering)
        cli = [sys.executable, "-m", "webhook_plugin.cli"]
        self.log = (tmp / f"{setup}-{time.monotonic_ns()}.log").open("w")
        self.serves: list[subprocess.Popen[bytes]] = []
        self.others: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        for _ in range(serves):
            port = free_port()
            argv = [*cli, "serve", "--config", str(config), "--port", str(port)]
            argv += ["--log-level", "warning", *options] + (["--no-workers"] if workers else [])
            self.serves.append(self._start(argv, tmp))
            self.urls.append(f"http://127.0.0.1:{port}")
            try:  # one at a time: each creates the tables
                wait_healthy(self.urls[-1], self.serves[-1])
            except RuntimeError:
                self.stop()
                raise
        for _ in range(workers):
            argv = [*cli, "worker", "--config", str(config), "--log-level", "warning"]
            self.others.append(self._start(argv, tmp))

    def _start(self, argv: list[str], tmp: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=self.log)

    def rss_mib(self, field: str = "VmHWM") -> float:
        """The serve processes' memory (the peak, VmHWM, or now, VmRSS), with
        their worker processes', summed."""
        total = 0
        for pid in self.serve_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
        return total / 1024

    def serve_pids(self) -> list[int]:
        """The serve processes and the worker processes they started."""
        pids = []
        for proc in self.serves:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            pids += [proc.pid, *map(int, children)]
        return pids

    def stop(self) -> None:
        for proc in [*self.serves, *self.others]:
            proc.terminate()
        for proc in [*self.serves, *self.others]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()
        if self.schema:
            from webhook_plugin.storage.postgres import drop_schema

            drop_schema(POSTGRES_URL, self.schema)


#: what the message route is sent: "contract" is what real chat clients send
#: (a ``messageId``, so that they may retry, and a contact); "bare" leaves both out.
#: Not by default: "chats1000", the contract's message in 1,000 conversations
#: (each gets many), and "ordered1000", the same to an agent with
#: ``ordering = "conversation"``.
BODIES = ("contract", "bare")
#: the bodies whose messages share 1,000 conversations
SHARED = {"chats1000": "none", "ordered1000": "conversation"}


def message(tag: str, i: int, body: str = "contract") -> bytes:
    """Message ``i`` of a run, in a conversation of its own; the text carries the
    send time (for the receiver's latency)."""
    fields: dict[str, object] = {
        "conversationId": f"c_{tag}_{i % 1000 if body in SHARED else i}",
        "channel": "website",
        "text": f"t={time.time():.6f} Olá, where is my order? " + "x" * 200,
    }
    if body == "contract" or body in SHARED:
        fields["messageId"] = f"wamid.{tag}.{i}"
        fields["contact"] = {
            "id": f"u{i}",
            "name": "Ana Souza",
            "email": "ana@example.com",
            "phoneNumber": "+5511999990000",
        }
    return json.dumps(fields).encode()


async def post(
    urls: list[str],
    n: int,
    c: int,
    tag: str,
    rate: float | None = None,
    body: str = "contract",
) -> tuple[float, int]:
    """Post ``n`` messages (:func:`message`), ``c`` in flight, spread over ``urls``
    (paced at ``rate`` per second when given): (acknowledged/s, events queued)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    events = 0
    counter = iter(range(n))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal events
            for i in counter:
                if rate:
                    await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                url = urls[i % len(urls)]
                async with session.post(
                    f"{url}/v1/agents/perf/messages", data=message(tag, i, body), headers=headers
                ) as r:
                    if r.status != 200:
                        raise RuntimeError(f"{r.status}: {await r.text()}")
                    events += len((await r.json())["events"])

        await asyncio.gather(*(worker() for _ in range(c)))
        return n / (time.perf_counter() - start), events


def arrive(rx: str, events: int, timeout: float = 180) -> dict:
    """The receiver's stats once ``events`` distinct webhooks have arrived."""
    deadline = time.monotonic() + timeout
    while (s := stats(rx))["unique_ok"] < events:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {s['unique_ok']} of {events} webhooks arrived")
        time.sleep(0.02)
    return s


def run_setup(
    setup: str,
    rx: str,
    n: int,
    c: int,
    tmp: Path,
    tag: str,
    long: int = 1,
    body: str = "contract",
) -> dict[str, float]:
    """One round of ``setup`` with messages of kind ``body``: full load, then half
    load (paced), then the long run."""
    d = Deployment(setup, rx, tmp, SHARED.get(body, "none"))
    try:
        reset(rx)
        _, warm = asyncio.run(post(d.urls, min(300, n), c, f"{tag}w", body=body))
        arrive(rx, warm)
        reset(rx)
        start = time.perf_counter()
        acked, events = asyncio.run(post(d.urls, n, c, tag, body=body))
        s = arrive(rx, events)
        result = {
            "acked": acked,
            "delivered": events / (time.perf_counter() - start),
            "p50_ms": s["p50_ms"],
            "p99_ms": s["p99_ms"],
            "rss_mib": d.rss_mib(),
        }
        reset(rx)
        half = acked / 2
        count = max(200, int(half * 3))  # three seconds at half the rate
        _, events = asyncio.run(post(d.urls, count, c, f"{tag}h", rate=half, body=body))
        s = arrive(rx, events)
        result["half_rate"] = half
        result["half_p50_ms"] = s["p50_ms"]
        result["half_p99_ms"] = s["p99_ms"]
        if long > 1:
            result["rss_now_1x"] = d.rss_mib("VmRSS")
            reset(rx)
            _, events = asyncio.run(post(d.urls, n * (long - 1), c, f"{tag}l", body=body))
            arrive(rx, events, timeout=600)
            result["rss_now_long"] = d.rss_mib("VmRSS")
            result["rss_peak_long"] = d.rss_mib()
        return result
    except Exception:
        d.log.flush()
        print(f"{setup} failed; its log:\n{Path(d.log.name).read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        d.stop()
