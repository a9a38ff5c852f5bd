"""Faults rehearsed under steady load, with nothing acknowledged lost.

Run them alone with ``pytest -m fault``. They need root (PostgreSQL is
restarted with ``pg_ctlcluster``; a small tmpfs is mounted) and are skipped
with the reason elsewhere, except that PostgreSQL is mandatory in CI
(``WEBHOOK_PLUGIN_REQUIRE_POSTGRES=1``).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import pytest

from helpers import POSTGRES_URL
from receiver import Receiver
from servers import AUTH, CLI, Server, postgres_database, write_config

pytestmark = [pytest.mark.fault, pytest.mark.slow]

#: a request that takes longer than this "hangs"
CLIENT_TIMEOUT = 10.0


# -- load ---------------------------------------------------------------------------------------


@dataclass
class Sent:
    message_id: str
    started: float
    ended: float = 0.0
    status: int | None = None  # None: no answer (a timeout or a connection error)
    body: Any = None
    error: str | None = None


@dataclass
class Load:
    """Posts user messages at a steady rate from a pool of threads (one
    conversation each, so that the AI's replies never wait for one another)."""

    url: str
    rate: float = 20.0
    text: str = "Olá, preciso de ajuda"
    sent: list[Sent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._client = httpx.Client(
            base_url=self.url,
            headers=AUTH,
            timeout=CLIENT_TIMEOUT,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )
        self._pool = ThreadPoolExecutor(48)
        self._pacer = threading.Thread(target=self._pace, daemon=True)

    def post(self, message_id: str, conversation: str | None = None) -> Sent:
        record = Sent(message_id, time.monotonic())
        try:
            r = self._client.post(
                "/v1/agents/support/messages",
                json={
                    "conversationId": conversation or f"conv-{message_id}",
                    "channel": "web",
                    "text": self.text,
                    "messageId": message_id,
                },
            )
            record.status = r.status_code
            try:
                record.body = r.json()
            except ValueError:
                record.body = r.text
        except httpx.HTTPError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        record.ended = time.monotonic()
        with self._lock:
            self.sent.append(record)
        return record

    def post_many(self, message_ids: list[str]) -> list[Sent]:
        """Post these at once, each from its own thread."""
        return list(self._pool.map(self.post, message_ids))

    def _pace(self) -> None:
        n = 0
        began = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self.post, f"m-{n}-{uuid.uuid4().hex[:8]}")
            n += 1
            pause = began + n / self.rate - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)

    def __enter__(self) -> Self:
        self._pacer.start()
        return self

    def stop(self) -> list[Sent]:
        """Stop sending; wait for the answers (or the client's timeouts)."""
        self._stop.set()
        if self._pacer.is_alive():
            self._pacer.join()
        self._pool.shutdown(wait=True)
        with self._lock:
            return list(self.sent)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def since(self, t: float) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.started >= t]


@dataclass
class HealthProbe:
    """Polls ``/healthz`` every 0.1 s: (monotonic time, status or None, body)."""

    url: str
    seen: list[tuple[float, int | None, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                at = time.monotonic()
                try:
                    r = client.get("/healthz")
                    self.seen.append((at, r.status_code, r.json()))
                except (httpx.HTTPError, ValueError) as exc:
                    self.seen.append((at, None, repr(exc)))
                self._stop.wait(0.1)

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def acknowledged(sent: list[Sent]) -> dict[str, list[str]]:
    """messageId -> the webhook ids its 200 answer listed."""
    return {
        s.message_id: [e["webhookId"] for e in s.body["events"]] for s in sent if s.status == 200
    }


def assert_clean_failures(sent: list[Sent]) -> None:
    """Every answer is 200, or 503 ``storage_unavailable`` in the error shape; no
    500, no request left without an answer within the client's timeout."""
    for s in sent:
        assert s.error is None, f"{s.message_id}: no answer ({s.error})"
        assert s.ended - s.started < CLIENT_TIMEOUT
        if s.status == 200:
            continue
        assert s.status == 503, (s.status, s.body)
        assert isinstance(s.body, dict) and set(s.body) == {"error"}, s.body
        assert s.body["error"]["code"] == "storage_unavailable", s.body
        assert s.body["error"]["message"], s.body


def wait_for_webhooks(rx: Receiver, wanted: set[str], timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        arrived = {r.headers.get("webhook-id") for r in list(rx.requests) if r.path == "/hook"}
        missing = wanted - arrived
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} acknowledged webhooks never arrived,"
                f" e.g. {sorted(missing)[:5]}"
            )
        time.sleep(0.1)


def summary(sent: list[Sent]) -> str:
    statuses = collections.Counter(s.status if s.status else s.error for s in sent)
    return ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str))


# -- PostgreSQL restarted mid-run --------------------------------------------------------------


def _cluster() -> tuple[str, str] | None:
    """(version, name) of the local PostgreSQL cluster, or None."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_isready") is None:
        return None
    try:
        versions = sorted(os.listdir("/etc/postgresql"))
    except OSError:
        return None
    for version in versions:
        if (Path("/etc/postgresql") / version / "main").is_dir():
            return version, "main"
    return None


def _pg_ctl(cluster: tuple[str, str], action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, action],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _pg_ready(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = subprocess.run(
            ["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-t", "2"],
            check=False,
            capture_output=True,
        )
        if ready.returncode == 0:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def pg_cluster() -> Iterator[tuple[str, str]]:
    """The local cluster we may stop and start; running again afterwards, whatever happens."""
    postgres_database("unused")  # skipped without a server, or failed in CI
    if "@127.0.0.1:5432/" not in POSTGRES_URL and "@localhost:5432/" not in POSTGRES_URL:
        pytest.skip("the test database is not the local cluster on port 5432")
    cluster = _cluster()
    if cluster is None:
        pytest.skip("no local PostgreSQL cluster to restart (pg_ctlcluster, /etc/postgresql)")
    if os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root")
    try:
        yield cluster
    finally:
        if not _pg_ready(1):
            _pg_ctl(cluster, "start")
        assert _pg_ready(30), "PostgreSQL did not come back after the test"


@pytest.mark.postgres
def test_postgres_restarted_mid_run_loses_nothing_acknowledged(
    tmp_path: Path, pg_cluster: tuple[str, str]
) -> None:
    """`serve` (with its workers) and a `worker` process on one schema; PostgreSQL
    stopped for a few seconds and started again under 20 messages a second."""
    schema = f"fault_pg_{os.getpid()}"
    database = postgres_database(schema)
    outage = 3.0  # seconds between the stop and the start: long enough to be seen
    began = time.monotonic()
    with Receiver() as rx:
        config = write_config(tmp_path, rx.url, database)
        server = Server(config, tmp_path)
        api_only: Server | None = None
        worker_log = tmp_path / "worker.log"
        with worker_log.open("w") as log_file:
            worker = subprocess.Popen(
                [*CLI, "worker", "--config", str(config)],
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        try:
            with HealthProbe(server.url) as health, Load(server.url, rate=20) as load:
                time.sleep(3)
                down_at = time.monotonic()
                stopped = _pg_ctl(pg_cluster, "stop")
                assert stopped.returncode == 0, stopped.stderr
                stopped_at = time.monotonic()
                assert not _pg_ready(0.5)
                time.sleep(outage)
                restart_at = time.monotonic()
                started = _pg_ctl(pg_cluster, "start")
                assert started.returncode == 0, started.stderr
                assert _pg_ready(30)
                up_at = time.monotonic()
                time.sleep(8)  # keep sending: the server reconnects by itself
                sent = load.stop()
            stopped_sending = time.monotonic()
            assert_clean_failures(sent)
            acked = acknowledged(sent)
            wanted = {w for ids in acked.values() for w in ids}
            wait_for_webhooks(rx, wanted)
            delivered_at = time.monotonic()

            # while the server was down, the API answered 503 (at once: see above)...
            during = [s for s in sent if stopped_at < s.started < restart_at]
            assert during and all(s.status == 503 for s in during), summary(during)
            # ...and it recovered without a restart: a few seconds on, all succeed
            tail = [s for s in sent if s.started > up_at + 3]
            assert len(tail) > 50 and all(s.status == 200 for s in tail), summary(tail)
            assert server.proc.poll() is None
            # /healthz said so while the database was down, and is fine again
            assert any(
                st == 503 and isinstance(body, dict) and body.get("status") == "failing"
                for at, st, body in health.seen
                if down_at <= at <= up_at
            ), health.seen
            assert all(st is not None for _, st, _ in health.seen), "/healthz hung"
            final = httpx.get(f"{server.url}/healthz", timeout=5)
            assert final.status_code == 200, final.text
            assert final.json() == {"status": "ok"}

            # the worker process reconnected and delivers by itself: with an
            # API-only server in front, nobody else can
            assert worker.poll() is None, "the worker process died"
            server.stop()
            api_only = Server(config, tmp_path, "--no-workers")
            probe_load = Load(api_only.url)
            probe = [probe_load.post(f"after-{i}") for i in range(10)]
            probe_load.close()
            assert all(p.status == 200 for p in probe), summary(probe)
            wait_for_webhooks(rx, {w for ids in acknowledged(probe).values() for w in ids}, 15)
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            logs = server.stop() + (api_only.stop() if api_only else "")
            if _pg_ready(30):
                from webhook_plugin.storage.postgres import drop_schema

                drop_schema(POSTGRES_URL, schema)
    assert worker.returncode == 0, worker_log.read_text()[-3000:]
    assert "Traceback" not in logs + worker_log.read_text(), logs[-3000:]
    received = collections.Counter(r.headers.get("webhook-id") for r in rx.requests)
    recovered = min(s.ended for s in sent if s.status == 200 and s.started > stopped_at)
    print(
        f"\nPostgreSQL down {up_at - down_at:.1f} s; {len(sent)} requests ({summary(sent)});"
        f" first 200 {recovered - up_at:+.1f} s from pg_isready; {len(wanted)} acknowledged"
        f" webhooks all delivered {delivered_at - stopped_sending:.1f} s after the load"
        f" (duplicates: {sum(c - 1 for c in received.values())}); test"
        f" {time.monotonic() - began:.1f} s"
    )


# -- SQLite on a full file system --------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """A 2 MiB tmpfs at tmp_path/disk; call the fixture's value with a new size to resize it."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def resize(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_sqlite_on_a_full_disk_answers_503_then_resumes_without_duplicates(
    tmp_path: Path, small_disk: Callable[[str], None]
) -> None:
    db = tmp_path / "disk" / "runtime.db"
    began = time.monotonic()
    with Receiver() as rx:
        config = write_config(tmp_path, rx.url, f"sqlite:///{db}")
        server = Server(config, tmp_path)
        load = None
        try:
            # large texts fill the disk in a few dozen messages; 8 at a time, so
            # that a group commit that fails holds several of them
            load = Load(server.url, text="x" * 4000)
            with HealthProbe(server.url) as health:
                n = 0
                while True:
                    sent = load.post_many([f"fill-{n}-{i}" for i in range(8)])
                    n += 1
                    if any(s.status == 503 for s in sent):
                        break
                    assert time.monotonic() - began < 30, "the disk never filled"
                full_at = time.monotonic()
                # a few more while full: refused, clearly. Not every one: a
                # checkpoint (the worker process's, or SQLite's own) starts the WAL
                # over in the space it already has, and one message may fit there;
                # it is then stored for good (checked with the others below)
                while_full = [load.post(f"full-{i}") for i in range(10)]
                refused_while_full = sum(s.status == 503 for s in while_full)
                assert refused_while_full >= 7, summary(while_full)
                assert all(s.status in (200, 503) for s in while_full), summary(while_full)
                time.sleep(1)
                full_health = httpx.get(f"{server.url}/healthz", timeout=5)
                small_disk("64m")
                freed_at = time.monotonic()
                # retry the refused messages (same ids), and send new ones
                refused = [s.message_id for s in load.sent if s.status == 503]
                retried = [load.post(m, f"conv-{m}") for m in refused]
                fresh = [load.post(f"fresh-{i}") for i in range(20)]
                # a second retry answers the same, with no new events
                again = [load.post(m, f"conv-{m}") for m in refused]
            sent = load.sent

            assert_clean_failures(sent)
            assert all(s.status == 200 for s in retried + fresh + again), summary(
                retried + fresh + again
            )
            for first, second in zip(retried, again, strict=True):
                assert second.body == first.body
            assert (
                any(
                    st == 503 and isinstance(body, dict) and body.get("status") == "failing"
                    for at, st, body in health.seen
                    if full_at <= at <= freed_at
                )
                or full_health.status_code == 503
            ), (full_health.text, health.seen[-5:])
            # healthy again once its loops have written since: the worker process
            # reports its recorder's failure (a second ago) until it has written
            deadline = time.monotonic() + 15
            while (final := httpx.get(f"{server.url}/healthz", timeout=5)).status_code != 200:
                assert time.monotonic() < deadline, final.text
                time.sleep(0.2)

            acked = acknowledged(sent)
            wanted = {w for ids in acked.values() for w in ids}
            wait_for_webhooks(rx, wanted)
            delivered_at = time.monotonic()
        finally:
            if load is not None:  # its connections, whatever failed
                load.close()
            log = server.stop()
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT id, author, COUNT(*) FROM messages GROUP BY id, author"
        ).fetchall()
    finally:
        conn.close()
    counts = {(mid, author): c for mid, author, c in rows}
    assert all(c == 1 for c in counts.values()), [k for k, c in counts.items() if c > 1]
    users = {mid for mid, author in counts if author == "user"}
    assert set(acked) <= users
    # a refused message is stored only once it was acknowledged
    assert users <= set(acked), users - set(acked)
    assert "Traceback" not in log, log[-3000:]
    print(
        f"\ndisk full after {len(sent) - len(retried) - len(fresh) - len(again)} requests;"
        f" {len(refused)} refused then retried; {len(wanted)} acknowledged webhooks delivered"
        f" {delivered_at - freed_at:.1f} s after space returned; total"
        f" {time.monotonic() - began:.1f} s"
    )
