"""The message route as a black box: `POST /v1/agents/perf/messages` over HTTP.

    python benchmarks/bench_api.py [--json] [--messages N] [--concurrency C]
                                   [--servers ours,uvicorn-httptools,...]

`webhook-plugin serve` runs in a subprocess (SQLite in a temp dir, an API
token, agent `perf` with a webhook pointing to the loopback receiver of
`_common.py`); an aiohttp client with C requests in flight posts N messages,
each in a conversation of its own (`{conversationId, channel: "website",
text}`). In the same run, with the same client, the same body and the same
server settings: a bare Starlette endpoint that decodes the same body and
answers JSON (`_bare_app.py`).

Reported: acknowledged messages/s (the API answers once the events are
durably queued) and the ratio against the bare endpoint; webhooks delivered/s
(receiver stats, from the first post until every event queued has arrived);
send-to-arrival p50/p99 (the text carries the send time; at full load, so it
includes the queue); the serve process's peak RSS (VmHWM).

For the server choice, the runtime app and the bare app also run under other
servers (`_serve_variant.py`): plain uvicorn with h11 and with httptools, and
Hypercorn on asyncio and trio when it is installed. With `--slowloris 40`,
each server (bare app, `ulimit -n 1024`) also faces the issue's attack:
1,100 idle, half-sent and trickling connections; the table says how many it
still holds after 40 s, whether a fresh client got answers meanwhile, and how
many lines it logged.

The message is what chat clients send (`--bodies contract`): a `messageId`, by
which a client retries safely, and a contact, AI on; `--bodies contract,bare`
(the default) adds the bare body (no `messageId`, no contact) as a second row.
The work floor is `1 / (1/bare Starlette + 1/bare aiohttp)`: one bare request
in and one bare POST out per message, the least a webhook sender must do, both
measured in the same run (bare aiohttp: `bench_delivery.bare_aiohttp` posting
to the same receiver); each setup is also given as a share of it.

With `--setups` (all by default; `--setups ""` for none), the message route
also runs on each way the runtime is deployed (`_deployments.py`): one `serve`
on SQLite (with its worker process), the same with `--inline-workers`, `serve
--no-workers` + `worker` on one SQLite file, one `serve` on PostgreSQL, with
and without its worker process, and two `serve --no-workers` + two `worker`
on one PostgreSQL database; with p99 at half load and, with `--long K`, the
RSS after K times as many messages.
"""

from __future__ import annotations

import asyncio
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import HERE, free_port, receiver, reset
from _deployments import (
    BODIES,
    SETUPS,
    arrive,
    post,
    postgres_up,
    run_setup,
    wait_healthy,
    write_config,
)
from _harness import emit, environment, parser

SERVERS = ["ours", "uvicorn-httptools", "uvicorn-h11", "hypercorn-asyncio", "hypercorn-trio"]


class Served:
    """One server process: `webhook-plugin serve`, or `_serve_variant.py`."""

    def __init__(
        self, server: str, app: str, config: Path, tmp: Path, fd_limit: int | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if fd_limit:
            env["BENCH_NOFILE"] = str(fd_limit)
        if server == "ours" and app == "runtime" and not fd_limit:
            # exactly what users run
            argv = [sys.executable, "-m", "webhook_plugin.cli", "serve", "--config", str(config)]
            argv += ["--port", str(self.port), "--log-level", "warning"]
        else:
            argv = [sys.executable, str(HERE / "_serve_variant.py"), server, app, str(self.port)]
            argv.append(str(config))
        self.log_path = tmp / f"serve-{self.port}.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            argv, cwd=tmp, stdout=subprocess.DEVNULL, stderr=self.log, env=env
        )
        try:
            wait_healthy(self.url, self.proc)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{server}/{app} did not start") from None

    def peak_rss_mib(self) -> float:
        """Its peak RSS, with its worker process's (``serve``'s own child)."""
        pid = self.proc.pid
        total = 0
        for p in [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        return total / 1024

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def one_run(
    server: str, app: str, rx: str, n: int, c: int, tmp: Path, tag: str
) -> dict[str, float]:
    config = write_config(tmp, rx)
    served = Served(server, app, config, tmp)
    try:
        reset(rx)
        _, warm = asyncio.run(post([served.url], min(200, n), c, f"{tag}w"))  # warm-up
        arrive(rx, warm, 60)  # the warm-up's webhooks arrive first
        reset(rx)
        start = time.perf_counter()
        acked, events = asyncio.run(post([served.url], n, c, tag))
        result = {"acked": acked, "events": events}
        if events:
            s = arrive(rx, events, 120)
            result["delivered"] = events / (time.perf_counter() - start)
            result["p50_ms"] = s["p50_ms"]
            result["p99_ms"] = s["p99_ms"]
        result["rss_mib"] = served.peak_rss_mib()
        return result
    except Exception:
        print(f"{server}/{app} failed; its log:\n{served.log_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        served.stop()


SLOW_GROUPS = {"idle": 500, "half head": 500, "trickled head": 50, "trickled body": 50}


def slowloris(server: str, rx: str, tmp: Path, seconds: float) -> list[object]:
    """The issue's attack against ``server`` (bare app) under `ulimit -n 1024`.

    1,100 connections: 500 send nothing, 500 half a request head, 50 trickle a
    head and 50 a body (a byte a second). A fresh client asks /healthz once a
    second meanwhile. After ``seconds``: how many of each group the server
    still holds open, the probe's successes, and the lines the server logged.
    """
    served = Served(server, "bare", write_config(tmp, rx), tmp, fd_limit=1024)
    lines_before = served.log_text().count("\n")
    sel = selectors.DefaultSelector()
    group_of: dict[socket.socket, str] = {}
    trickling: list[socket.socket] = []
    probes = [0, 0]
    try:
        for group, count in SLOW_GROUPS.items():
            for _ in range(count):
                s = socket.socket()
                s.settimeout(5)
                try:
                    s.connect(("127.0.0.1", served.port))
                    if group == "half head":
                        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Ag")
                    elif group == "trickled body":
                        s.sendall(b"POST /v1/agents/perf/messages HTTP/1.1\r\nHost: x\r\n")
                        s.sendall(b"Content-Length: 100000\r\n\r\n{")
                except OSError:
                    s.close()
                    continue
                s.setblocking(False)
                group_of[s] = group
                sel.register(s, selectors.EVENT_READ)
                if group.startswith("trickled"):
                    trickling.append(s)
                if group == "trickled head":
                    s.send(b"GET /healthz HTTP/1.1\r\n")
        end = time.monotonic() + seconds
        next_tick = time.monotonic()
        while time.monotonic() < end:
            for key, _ in sel.select(0.1):
                s = key.fileobj  # type: ignore[assignment]
                try:
                    if s.recv(65536):
                        continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                sel.unregister(s)
                group_of.pop(s)
                s.close()
            if time.monotonic() >= next_tick:
                next_tick += 1
                for s in trickling:
                    if s in group_of:
                        try:
                            s.send(b"a")
                        except OSError:
                            pass
                probes[1] += 1
                try:
                    with urllib.request.urlopen(f"{served.url}/healthz", timeout=2) as r:
                        probes[0] += r.status == 200
                except OSError:
                    pass
        still_open = {g: sum(1 for v in group_of.values() if v == g) for g in SLOW_GROUPS}
    finally:
        sel.close()
        for s in group_of:
            s.close()
        served.stop()
    lines = served.log_text().count("\n") - lines_before
    return [
        server,
        *(f"{still_open[g]}/{c}" for g, c in SLOW_GROUPS.items()),
        f"{probes[0]}/{probes[1]}",
        f"{lines:,}",
    ]


def available(server: str) -> bool:
    if server.startswith("hypercorn"):
        try:
            import hypercorn  # noqa: F401
        except ImportError:
            return False
    return True


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--messages", type=int, default=5_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated; the first is the reference for the ratios",
    )
    p.add_argument("--apps", default="bare,runtime", help="bare, runtime or both")
    p.add_argument(
        "--slowloris",
        type=float,
        default=0,
        metavar="SECONDS",
        help="also run the slowloris test against each server for this long (40 is enough)",
    )
    p.add_argument(
        "--setups",
        default=",".join(SETUPS),
        help="deployments to run the message route on (comma-separated; '' for none)",
    )
    p.add_argument(
        "--bodies",
        default=",".join(BODIES),
        help="message kinds posted to each setup: contract (messageId, contact), bare",
    )
    p.add_argument(
        "--long",
        type=int,
        default=1,
        metavar="K",
        help="also post K times as many messages to the sqlite setup and report its RSS",
    )
    args = p.parse_args()
    rounds = 1 if args.quick else min(args.rounds, 3)
    n = 1_000 if args.quick else args.messages
    bare_n = max(n, 5_000 if args.quick else 20_000)
    c = args.concurrency
    servers = [s for s in args.servers.split(",") if available(s)]
    skipped = [s for s in args.servers.split(",") if s not in servers]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    slow_rows = []
    setups = [x for x in args.setups.split(",") if x]
    if any(x.startswith("postgres") for x in setups) and not postgres_up():
        skipped += [x for x in setups if x.startswith("postgres")]
        setups = [x for x in setups if not x.startswith("postgres")]
    by_setup: dict[str, list[dict[str, float]]] = {}
    bodies = [b for b in args.bodies.split(",") if b]
    senders: list[float] = []  # bare aiohttp to the same receiver, for the work floor
    with receiver() as rx, tempfile.TemporaryDirectory() as tmp:
        if args.slowloris:
            _raise_own_fd_limit(4096)
            for server in servers:
                slow_rows.append(slowloris(server, rx, Path(tmp), args.slowloris))
        for r in range(rounds):
            for server in servers:
                for app in args.apps.split(","):
                    count = n if app == "runtime" else bare_n  # bare runs are short
                    results.setdefault((server, app), []).append(
                        one_run(server, app, rx, count, c, Path(tmp), f"{r}{server}{app}")
                    )
            if setups:
                from bench_delivery import bare_aiohttp

                senders.append(bare_aiohttp(rx, bare_n, c))
            for setup in setups:
                for body in bodies:
                    long = args.long if setup == "sqlite" and r == 0 and body == bodies[0] else 1
                    by_setup.setdefault(f"{setup} ({body})", []).append(
                        run_setup(
                            setup, rx, n, c, Path(tmp), f"{r}{setup}{body}", long=long, body=body
                        )
                    )

    def med(server: str, app: str, key: str) -> float:
        values = [x[key] for x in results.get((server, app), []) if key in x]
        return statistics.median(values) if values else float("nan")

    ref = servers[0]
    rows = []
    for server in servers:
        bare = med(server, "bare", "acked")
        runtime = med(server, "runtime", "acked")
        rows.append(
            [
                server,
                f"{bare:,.0f}",
                f"{bare / med(ref, 'bare', 'acked'):.0%}",
                f"{runtime:,.0f}",
                f"{runtime / bare:.0%}",
                f"{runtime / med(ref, 'runtime', 'acked'):.0%}",
                f"{med(server, 'runtime', 'delivered'):,.0f}",
                med(server, "runtime", "p50_ms"),
                med(server, "runtime", "p99_ms"),
                f"{med(server, 'runtime', 'rss_mib'):.0f}",
                f"{med(server, 'bare', 'rss_mib'):.0f}",
            ]
        )
    emit(
        args,
        f"bench_api: {n:,} messages, {c} in flight, aiohttp client, loopback receiver"
        f" ({environment()}), median of {rounds} round(s)",
        [
            "server",
            "bare msg/s",
            f"bare vs {ref}",
            "runtime msg/s",
            "runtime vs bare",
            f"runtime vs {ref}",
            "webhooks/s",
            "p50 ms",
            "p99 ms",
            "RSS MiB",
            "bare RSS MiB",
        ],
        rows,
        {"skipped (not installed)": ", ".join(skipped)} if skipped else None,
    )
    if by_setup:
        bare = med(ref, "bare", "acked")
        sender = statistics.median(senders)
        emit_setups(args, by_setup, bare, 1 / (1 / bare + 1 / sender), sender, n, c, rounds)
    if slow_rows:
        emit(
            args,
            f"\nslowloris: 1,100 connections against the bare app under `ulimit -n 1024`,"
            f" {args.slowloris:g} s later; a fresh /healthz probe once a second",
            ["server", *(f"{g} still open" for g in SLOW_GROUPS), "probe 200", "log lines"],
            slow_rows,
        )


def emit_setups(
    args: object,
    by_setup: dict[str, list[dict[str, float]]],
    bare: float,
    floor: float,
    sender: float,
    n: int,
    c: int,
    rounds: int,
) -> None:
    def med(setup: str, key: str) -> float:
        values = [x[key] for x in by_setup[setup] if key in x]
        return statistics.median(values) if values else float("nan")

    rows = []
    for setup in by_setup:
        acked = med(setup, "acked")
        rows.append(
            [
                setup,
                f"{acked:,.0f}",
                f"{acked / bare:.2f}x",
                f"{acked / floor:.2f}x",
                f"{med(setup, 'delivered'):,.0f}",
                f"{med(setup, 'delivered') / acked:.2f}",
                med(setup, "p50_ms"),
                med(setup, "p99_ms"),
                f"{med(setup, 'half_rate'):,.0f}",
                med(setup, "half_p99_ms"),
                f"{med(setup, 'rss_mib'):.0f}",
            ]
        )
    emit(
        args,
        f"\nsetups: {n:,} messages, {c} in flight, against the bare endpoint ({bare:,.0f}"
        f" msg/s) and the work floor ({floor:,.0f} msg/s; bare aiohttp {sender:,.0f} req/s),"
        f" same run; median of {rounds} round(s)",
        [
            "setup (body)",
            "acked msg/s",
            "vs bare",
            "vs floor",
            "delivered ev/s",
            "delivered/acked",
            "p50 ms",
            "p99 ms",
            "half rate msg/s",
            "p99 ms at half",
            "serve RSS MiB",
        ],
        rows,
    )
    long_runs = [x for xs in by_setup.values() for x in xs if "rss_now_long" in x]
    if long_runs:
        x = long_runs[0]
        print(
            f"\nsqlite, RSS of serve now: {x['rss_now_1x']:.0f} MiB after the first {n:,}"
            f" messages, {x['rss_now_long']:.0f} MiB after {args.long}x as many"  # type: ignore[attr-defined]
            f" (peak {x['rss_peak_long']:.0f} MiB)"
        )


def _raise_own_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


if __name__ == "__main__":
    main()
