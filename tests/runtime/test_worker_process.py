"""`webhook-plugin serve` delivering from a worker process of its own: it runs,
counts in /metrics, comes back when killed, and never outlives serve."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver import Receiver
from servers import AUTH, Server, post_message, write_config
from webhook_plugin.delivery.metrics import DeliveryMetrics, merge
from webhook_plugin.runtime.worker.process import WorkerProcess

needs_two_cores = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="on one core serve delivers in its own process"
)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too (its parent, killed, no longer reaps it)
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def wait_until(check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def sample(text: str, line_start: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)
    )


@pytest.mark.slow
@needs_two_cores
def test_serve_delivers_from_its_worker_process_and_restarts_it(tmp_path: Path) -> None:
    """Killed, it comes back; meanwhile messages are accepted and /healthz says
    why not; its counters do not go down; and the new one runs serve's config
    as serve read it, though the file changed since."""
    with Receiver() as rx:
        config = write_config(tmp_path, rx.url)
        server = Server(config, tmp_path)
        config.write_text("not = [valid")
        api = httpx.Client(base_url=server.url, headers=AUTH, timeout=10)
        try:
            wait_until(lambda: len(children(server.proc.pid)) == 1)
            [worker] = children(server.proc.pid)
            first = {e["webhookId"] for e in post_message(api, "c_1")["events"]}
            wait_until(lambda: first <= {r.headers.get("webhook-id") for r in rx.requests})

            # serve's /metrics counts what its worker process sent (once recorded)
            succeeded = 'webhook_plugin_attempts_total{outcome="succeeded"}'
            wait_until(lambda: sample(api.get("/metrics").text, succeeded) == len(first))
            metrics = api.get("/metrics").text
            assert sample(metrics, "webhook_plugin_events_queued_total") == len(first)
            assert metrics.count("# TYPE webhook_plugin_pending_deliveries gauge") == 1

            os.kill(worker, signal.SIGKILL)
            wait_until(lambda: api.get("/healthz").status_code == 503, timeout=5)
            health = api.get("/healthz").json()
            assert "delivery worker process exited" in health["reason"], health
            # accepted while it is down, delivered once it is back
            second = {e["webhookId"] for e in post_message(api, "c_2")["events"]}
            wait_until(lambda: api.get("/healthz").status_code == 200)
            [again] = children(server.proc.pid)
            assert again != worker
            wait_until(lambda: second <= {r.headers.get("webhook-id") for r in rx.requests})
            total = len(first) + len(second)
            wait_until(lambda: sample(api.get("/metrics").text, succeeded) == total)
        finally:
            api.close()
            log = server.stop()
        assert not alive(worker)
        assert "worker_process.down" in log
        assert "Traceback" not in log


@pytest.mark.slow
@needs_two_cores
def test_the_worker_process_is_stopped_by_serve_only(tmp_path: Path) -> None:
    """A stop signal for the whole service (a service manager's, or Ctrl-C in a
    terminal) reaches serve, which stops its worker in order: the worker itself
    goes on delivering through one."""
    with Receiver() as rx:
        server = Server(write_config(tmp_path, rx.url), tmp_path)
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as api:
            [worker] = children(server.proc.pid)
            os.kill(worker, signal.SIGTERM)
            os.kill(worker, signal.SIGINT)
            sent = {e["webhookId"] for e in post_message(api, "c_1")["events"]}
            wait_until(lambda: sent <= {r.headers.get("webhook-id") for r in rx.requests})
            assert children(server.proc.pid) == [worker]
            assert api.get("/healthz").status_code == 200
        log = server.stop()
        assert not alive(worker)
        assert "worker_process.down" not in log


@pytest.mark.slow
@needs_two_cores
def test_the_worker_process_stops_when_serve_is_killed(tmp_path: Path) -> None:
    """No orphan: kill -9 closes serve's end of the pipe, and its worker drains
    and exits."""
    with Receiver() as rx:
        server = Server(write_config(tmp_path, rx.url), tmp_path)
        [worker] = children(server.proc.pid)
        server.proc.kill()
        server.proc.wait()
        wait_until(lambda: not alive(worker))
        assert "serve closed its pipe" in server.log.read_text()


@pytest.mark.slow
@needs_two_cores
def test_a_graceful_stop_stops_the_worker_process_too(tmp_path: Path) -> None:
    with Receiver() as rx:
        server = Server(write_config(tmp_path, rx.url), tmp_path)
        [worker] = children(server.proc.pid)
        log = server.stop()
        assert not alive(worker)
        assert "worker_process.killed" not in log
        assert log.count("engine.stopped") == 2  # both drained


@pytest.mark.slow
def test_inline_workers_deliver_in_serve_itself(tmp_path: Path) -> None:
    with Receiver() as rx:
        server = Server(write_config(tmp_path, rx.url), tmp_path, "--inline-workers")
        try:
            assert children(server.proc.pid) == []
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as api:
                sent = {e["webhookId"] for e in post_message(api, "c_1")["events"]}
            wait_until(lambda: sent <= {r.headers.get("webhook-id") for r in rx.requests})
        finally:
            server.stop()


#: a stand-in child: reads serve's hello line, serves BODY as its metrics on a
#: says it is ready, then reports BODY as its metrics every 50 ms (nothing
#: with HANG), and exits once its standard input closes
FAKE_CHILD = """
import json, os, sys, threading, time
hello = json.loads(sys.stdin.readline())
sys.stdout.buffer.write(b'{"ready": true}\\n'); sys.stdout.flush()
def reports():
    while not os.environ.get("HANG"):
        raw = os.environ.get("RAW")
        raw = "x" * (2 * 1024 * 1024) if raw == "LONG" else raw
        line = raw or json.dumps({"metrics": os.environ["BODY"]})
        sys.stdout.buffer.write(line.encode() + b"\\n"); sys.stdout.flush()
        time.sleep(0.05)
threading.Thread(target=reports, daemon=True).start()
sys.stdin.read()
"""


async def wait_for(check: object, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.05)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("output", "then"),
    [
        (b"", "os.close(1)"),
        (b"", "sys.exit(3)"),
        (b"not json\n", "time.sleep(60)"),
        (b'{"ready": "yes"}\n', "time.sleep(60)"),
        (b'{"metrics_port": 8080}\n', "time.sleep(60)"),  # an older version's hello
        (b'{"ready": false}\n', "time.sleep(60)"),
        (b"[" * 3000 + b"\n", "time.sleep(60)"),
        (b"x" * 10_000, "time.sleep(60)"),
        (b'{"ready": tr', "time.sleep(60)"),  # and then silence
    ],
)
async def test_a_worker_that_never_says_it_is_ready_is_reported_and_started_again(
    output: bytes, then: str
) -> None:
    """What the child prints first is checked: anything but "ready" leaves it
    reported down (and killed, if it does not end by itself), and a
    silent one is not waited for beyond the start timeout. Whatever it does,
    the supervisor goes on."""
    script = (
        f"import os, sys, time; sys.stdout.buffer.write({output!r}); sys.stdout.flush(); {then}"
    )
    process = WorkerProcess([sys.executable, "-c", script], None, start_timeout=2)
    async with anyio.create_task_group() as tg:
        await tg.start(process.run)
        assert "starting" in (process.problem() or "")
        await wait_for(lambda: "did not start" in (process.problem() or ""))
        assert await process.metrics() == ""
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_worker_that_cannot_be_started_is_reported_not_fatal() -> None:
    process = WorkerProcess(["/nonexistent/python", "-m", "webhook_plugin.cli"], None)
    async with anyio.create_task_group() as tg:
        await tg.start(process.run)
        await wait_for(lambda: "could not be started" in (process.problem() or ""))
        tg.cancel_scope.cancel()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        "<html>not metrics</html>",
        "webhook_plugin_attempts_total{ 1\n",
        "x abc\n",
        "webhook_plugin_delivery_healthy 1\nx abc\n",  # good, then not
    ],
)
async def test_reports_that_do_not_parse_count_as_none(
    body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's reports are hostile input too: one that does not parse is
    not merged (no 500 from /metrics), and silence that long reports it down."""
    monkeypatch.setenv("BODY", body)
    monkeypatch.setattr("webhook_plugin.runtime.worker.process._PROBE", 0.1)
    process = WorkerProcess([sys.executable, "-c", FAKE_CHILD], "x = 1", "test.toml")
    async with anyio.create_task_group() as tg:
        await tg.start(process.run)
        await wait_for(lambda: process.problem() == "the delivery worker process does not report")
        assert await process.metrics() == ""
        tg.cancel_scope.cancel()


@pytest.mark.anyio
@pytest.mark.parametrize("raw", ["not json", '{"metrics": 1}', "[]", '{"other": "x"}', "LONG"])
async def test_report_lines_that_are_not_reports_count_as_none(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BODY", "")
    monkeypatch.setenv("RAW", raw)
    monkeypatch.setattr("webhook_plugin.runtime.worker.process._PROBE", 0.1)
    process = WorkerProcess([sys.executable, "-c", FAKE_CHILD], None)
    async with anyio.create_task_group() as tg:
        await tg.start(process.run)
        await wait_for(lambda: process.problem() == "the delivery worker process does not report")
        assert await process.metrics() == ""
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_worker_that_reports_a_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "BODY", "# TYPE webhook_plugin_delivery_healthy gauge\nwebhook_plugin_delivery_healthy 0\n"
    )
    monkeypatch.setattr("webhook_plugin.runtime.worker.process._PROBE", 0.1)
    process = WorkerProcess([sys.executable, "-c", FAKE_CHILD], None)
    async with anyio.create_task_group() as tg:
        await tg.start(process.run)
        await wait_for(lambda: "reports a failure" in (process.problem() or ""))
        tg.cancel_scope.cancel()


counts = st.dictionaries(
    st.sampled_from(["succeeded", "retry", "failed"]), st.integers(0, 10**6), min_size=1
)


@given(st.lists(counts, min_size=1, max_size=4), st.integers(0, 10**6))
def test_merged_metrics_sum_counters_and_keep_the_shared_backlog_once(
    processes: list[dict[str, int]], pending: int
) -> None:
    texts = []
    for attempts in processes:
        metrics = DeliveryMetrics(backlog=lambda: (pending, None))
        for outcome, n in attempts.items():
            metrics._attempts.labels(outcome).inc(n)
        texts.append(metrics.render())
    merged = merge(*texts)
    for outcome in ("succeeded", "retry", "failed"):
        line = f'webhook_plugin_attempts_total{{outcome="{outcome}"}}'
        assert sample(merged, line) == sum(p.get(outcome, 0) for p in processes)
    assert sample(merged, "webhook_plugin_pending_deliveries ") == pending
    assert merge(texts[0]) == texts[0]
    # what a dead worker process leaves: its counts, not its gauges
    carried = merge(*texts, gauges=False)
    assert "webhook_plugin_pending_deliveries " not in carried
    assert sample(carried, 'webhook_plugin_attempts_total{outcome="retry"}') == sum(
        p.get("retry", 0) for p in processes
    )


@pytest.mark.anyio
async def test_a_worker_that_stops_reporting_is_killed_and_started_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopped or wedged (it never reports): reported, then killed and
    replaced, rather than left holding its leases for ever."""
    monkeypatch.setenv("BODY", "")
    monkeypatch.setenv("HANG", "1")
    monkeypatch.setattr("webhook_plugin.runtime.worker.process._PROBE", 0.1)
    process = WorkerProcess([sys.executable, "-c", FAKE_CHILD], None)
    async with anyio.create_task_group() as tg:
        await tg.start(process.run)
        await wait_for(lambda: process.problem() == "the delivery worker process does not report")
        await wait_for(lambda: "exited with code -9" in (process.problem() or ""))
        tg.cancel_scope.cancel()


def _listening(pid: int) -> list[str]:
    """The TCP ports ``pid`` listens on (from /proc: no packet sent)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.append(fields[1])
    return ports


@pytest.mark.slow
@needs_two_cores
def test_serves_worker_process_listens_on_no_port(tmp_path: Path) -> None:
    """Its metrics and health reach serve over the pipe only serve holds, not a
    port any local user could open."""
    with Receiver() as rx:
        server = Server(write_config(tmp_path, rx.url), tmp_path)
        try:
            wait_until(lambda: len(children(server.proc.pid)) == 1)
            [worker] = children(server.proc.pid)
            with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as api:
                wait_until(lambda: api.get("/healthz").status_code == 200)
                events = post_message(api, "c_pipe")["events"]
                succeeded = 'webhook_plugin_attempts_total{outcome="succeeded"}'
                wait_until(lambda: sample(api.get("/metrics").text, succeeded) == len(events))
            assert _listening(worker) == []
            assert len(_listening(server.proc.pid)) == 1  # serve's own port
        finally:
            server.stop()


@pytest.mark.slow
def test_a_workers_metrics_server_closes_idle_connections(tmp_path: Path) -> None:
    """`webhook-plugin worker --metrics-port`: a connection that sends nothing is
    closed after a while, not kept with a thread for ever."""
    import socket
    import subprocess

    from servers import CLI, free_port

    config = write_config(tmp_path, "http://127.0.0.1:9")
    port = free_port()
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [*CLI, "worker", "--config", str(config), "--metrics-port", str(port)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/metrics"))
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        started = time.monotonic()
        for s in idle:
            s.settimeout(20)
            assert s.recv(1) == b""  # closed by the server
            s.close()
        assert time.monotonic() - started < 15
        assert _answers(f"http://127.0.0.1:{port}/metrics")
    finally:
        worker.terminate()
        worker.wait(timeout=20)


def _answers(url: str) -> bool:
    try:
        return "webhook_plugin_" in httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return False
