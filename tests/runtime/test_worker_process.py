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
from webhook_plugin.runtime.worker_process import WorkerProcess

needs_two_cores = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="on one core serve delivers in its own process"
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
    with Receiver() as rx:
        server = Server(write_config(tmp_path, rx.url), tmp_path)
        api = httpx.Client(base_url=server.url, headers=AUTH, timeout=10)
        try:
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
        finally:
            api.close()
            log = server.stop()
        assert not alive(worker)
        assert "worker_process.exited" in log
        assert "Traceback" not in log


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


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("output", "then"),
    [
        (b"", "os.close(1)"),
        (b"not json\n", "time.sleep(60)"),
        (b'{"metrics_port": "80"}\n', "time.sleep(60)"),
        (b'{"metrics_port": 70000}\n', "time.sleep(60)"),
        (b"[]\n", "time.sleep(60)"),
        (b"x" * 10_000, "time.sleep(60)"),
        (b'{"metrics_port": 8', "time.sleep(60)"),  # and then silence
    ],
)
async def test_a_worker_that_never_says_it_is_ready_is_killed_and_reported(
    output: bytes, then: str
) -> None:
    """What the child prints first is checked: anything but its metrics port
    leaves it reported down and killed, and a silent one is not waited for
    beyond the start timeout."""
    script = (
        f"import os, sys, time; sys.stdout.buffer.write({output!r}); sys.stdout.flush(); {then}"
    )
    process = WorkerProcess([sys.executable, "-c", script], start_timeout=2)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(process.run)
        assert process.problem() is not None
        assert await process.metrics() == ""
        with anyio.fail_after(10):
            while "exited" not in (process.problem() or ""):
                await anyio.sleep(0.05)
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
