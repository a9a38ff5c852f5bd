"""The embedded backend: one SQLite file in WAL mode, stdlib ``sqlite3``.

One write connection behind a lock (SQLite has one writer anyway) and one
read connection, so the delivery log can be read while a batch commits.
``synchronous=FULL``: an acknowledged event survives a crash of the process
and of the machine. Callers batch their writes (group commit), which is what
makes the ``fsync`` affordable.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

from ..exceptions import StorageError
from ._sql import SQLStore

__all__ = ["SQLiteStore"]

T = TypeVar("T")

#: seconds between two looks at the queued-deliveries counter: 5 ms after a
#: change, growing to 50 ms while nothing happens (an idle process stays idle)
_WATCH_INTERVAL: Final = (0.005, 0.05)
#: how long a writer waits for another process's write transaction (theirs
#: take milliseconds: one held longer is a stuck or hostile process, and a
#: request must be answered 503 rather than hang), and the longest pause
#: between its tries (SQLite's own busy handler sleeps up to 100 ms between
#: tries, which is what a message waits when ``serve`` and ``worker`` share
#: the file). Background writes (results, claims) are retried after it.
_BEGIN_WAIT: Final = 5.0
_BEGIN_PAUSE: Final = (0.0002, 0.002)


def _begin(conn: sqlite3.Connection, wait: float = _BEGIN_WAIT) -> None:
    """``BEGIN IMMEDIATE``, waiting in short steps (up to ``wait`` seconds) while
    another process writes."""
    deadline = time.monotonic() + wait
    pause = _BEGIN_PAUSE[0]
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            # SQLITE_BUSY and its extended codes (SQLITE_BUSY_RECOVERY...)
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _BEGIN_PAUSE[1])


#: the delivery store's tables (the runtime's chat store has its own migrations)
_MIGRATIONS: list[str] = [
    # version 1 (IF NOT EXISTS: databases made before the stores were split
    # already hold these tables)
    """
    CREATE TABLE IF NOT EXISTS deliveries (
        id INTEGER PRIMARY KEY,
        webhook_id TEXT NOT NULL UNIQUE,
        agent_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body BLOB NOT NULL,
        created_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        round_start INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        lease_until REAL NOT NULL DEFAULT 0,
        lease_owner TEXT,
        last_status_code INTEGER,
        last_error TEXT,
        updated_at REAL
    );
    CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at)
        WHERE status = 'pending';
    CREATE INDEX IF NOT EXISTS deliveries_agent ON deliveries (agent_id, status, id);
    CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status, id);
    CREATE TABLE IF NOT EXISTS attempts (
        delivery_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        started_at REAL NOT NULL,
        duration_ms REAL NOT NULL,
        status_code INTEGER,
        error TEXT,
        response_excerpt TEXT,
        PRIMARY KEY (delivery_id, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS webhook_settings (
        agent_id TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        disabled_reason TEXT,
        failing_since REAL,
        updated_at REAL NOT NULL
    );
    """,
    # version 2: a counter bumped by every transaction that queues deliveries,
    # which a worker on the same file watches (SQLite's NOTIFY, in effect)
    """
    CREATE TABLE IF NOT EXISTS queued_signal (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        n INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO queued_signal (id, n) VALUES (1, 0);
    """,
    # version 3: each event's place in its conversation, and ordered sending
    """
    ALTER TABLE deliveries ADD COLUMN conversation_id TEXT;
    ALTER TABLE deliveries ADD COLUMN sequence INTEGER;
    ALTER TABLE deliveries ADD COLUMN ordered INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN head_since REAL;
    ALTER TABLE webhook_settings ADD COLUMN failing_notified INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN round_trigger TEXT;
    ALTER TABLE attempts ADD COLUMN url TEXT;
    ALTER TABLE attempts ADD COLUMN response_headers TEXT;
    ALTER TABLE attempts ADD COLUMN trigger TEXT;
    CREATE TABLE IF NOT EXISTS conversation_sequences (
        agent_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        last INTEGER NOT NULL,
        PRIMARY KEY (agent_id, conversation_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS deliveries_lane ON deliveries
        (agent_id, conversation_id, sequence) WHERE status = 'pending';
    CREATE INDEX IF NOT EXISTS deliveries_conversation ON deliveries
        (agent_id, conversation_id, id);
    """,
]


def _why_unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written, when the file system says so."""
    folder = path.parent if str(path.parent) else Path()
    try:
        fs = os.statvfs(folder)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return "its file system is mounted read-only"
    if path.exists() and not os.access(path, os.W_OK):
        return "the file is read-only"
    if not os.access(folder, os.W_OK):
        return "its folder cannot be written"
    if fs.f_bavail * fs.f_frsize < 64 * 1024:
        return "the disk is full"
    return None


class SQLiteStore(SQLStore):
    """A :class:`~webhook_plugin.storage.base.DeliveryStore` on one SQLite file."""

    dialect: ClassVar[str] = "sqlite"
    #: another process on the same file (``webhook-plugin worker``) sees new
    #: deliveries through a counter their transactions bump (:meth:`wait_for_new`)
    supports_notify: ClassVar[bool] = True
    #: in WAL mode a reader never waits for a writer, and a lookup by key takes
    #: microseconds: less than handing it to a thread and back (see :meth:`point_read`)
    point_reads_inline: ClassVar[bool] = True
    #: SQLite's planner, without statistics, takes the equality on ``status``
    #: (``deliveries_status``) over the partial index that is already in
    #: ``next_attempt_at`` order: it then reads every pending row and sorts them
    #: for each claim (23 ms with 20,000 pending, against 0.16 ms by the index;
    #: an outage's backlog would make every claim slower than its attempts)
    _CLAIM: ClassVar[str] = SQLStore._CLAIM.replace(
        " FROM deliveries WHERE", " FROM deliveries INDEXED BY deliveries_due WHERE"
    )

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._write: sqlite3.Connection | None = None
        self._read: sqlite3.Connection | None = None
        #: reads the queued-deliveries counter for :meth:`wait_for_new` (one thread at a time)
        self._watch: sqlite3.Connection | None = None
        self._watch_lock = threading.Lock()
        self._watch_pause = _WATCH_INTERVAL[0]
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        #: lookups by key, usually from the event loop: no long read ever holds it
        self._point: sqlite3.Connection | None = None
        self._point_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # lifecycle -----------------------------------------------------------------

    def _connect(self, timeout: float = 30.0) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=timeout
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def open(self) -> None:
        if self._write is not None:
            return
        try:
            if self.path.parent != Path():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write = self._connect()
            # its waits for another process's writer are _begin()'s, in short steps
            self._write.execute("PRAGMA busy_timeout = 0")
            self.migrate("delivery", _MIGRATIONS)
            self._probe_write(self._write)
            self._read = self._connect()
            # a WAL reader waits only in rare cases (recovery after a crash): a
            # short busy timeout bounds how long an event loop could wait
            self._point = self._connect(timeout=1.0)
        except (sqlite3.Error, OSError) as exc:
            self.close()
            why = _why_unwritable(self.path)
            raise StorageError(
                f"cannot open SQLite database {str(self.path)!r}: {exc}"
                + (f" ({why})" if why else "")
            ) from exc

    def close(self) -> None:
        with self._watch_lock, self._point_lock:
            for conn in (self._read, self._write, self._watch, self._point):
                if conn is not None:
                    conn.close()
            self._read = self._write = self._watch = self._point = None

    def _after_insert(self, conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE queued_signal SET n = n + 1")

    def wait_for_new(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until a transaction queues deliveries (a
        process on the same file, such as ``serve --no-workers``, or this one).

        It watches a counter that only those transactions bump, so that
        claims and recorded attempts, which commit far more often, wake no one.
        """
        deadline = time.monotonic() + timeout
        with self._watch_lock:
            if self._write is None:
                raise StorageError(f"{self!r} is not open")
            if self._watch is None:
                self._watch = sqlite3.connect(self.path, check_same_thread=False)
            watch, query = self._watch, "SELECT n FROM queued_signal"
            try:
                seen = watch.execute(query).fetchone()
                pause = self._watch_pause
                while time.monotonic() < deadline:
                    time.sleep(pause)
                    if watch.execute(query).fetchone() != seen:
                        self._watch_pause = _WATCH_INTERVAL[0]
                        return True
                    pause = min(pause * 2, _WATCH_INTERVAL[1])
                self._watch_pause = pause
            except sqlite3.Error as exc:
                raise StorageError(f"SQLite read failed: {exc}") from exc
        return False

    @staticmethod
    def _probe_write(conn: sqlite3.Connection) -> None:
        """Fail now, not at the first event, on a file we may read but not write
        (a read-only file or mount): the writes a real transaction makes, rolled back."""
        _begin(conn)
        try:
            conn.execute("CREATE TABLE write_probe (x INTEGER)")
            conn.execute("INSERT INTO write_probe VALUES (1)")
        except sqlite3.OperationalError as exc:
            raise sqlite3.OperationalError(
                f"{exc}: the file or its folder cannot be written (permissions, a read-only"
                " mount, or a full disk)"
            ) from None
        finally:
            conn.execute("ROLLBACK")

    def migrate(self, component: str, scripts: Sequence[str]) -> None:
        if self._write is None:
            raise StorageError(f"{self!r} is not open")
        with self._write_lock:
            conn = self._write
            _begin(conn)
            try:
                self._migrate_in(conn, component, scripts)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _tx(
        self, *, durable: bool = True, wait: float | None = None
    ) -> Iterator[sqlite3.Connection]:
        """One write transaction, serialised with every other writer."""
        if self._write is None:
            raise StorageError(f"{self!r} is not open")
        # one deadline for this process's writer and the file's write lock
        deadline = None if wait is None else time.monotonic() + wait
        if not self._write_lock.acquire(timeout=-1 if wait is None else wait):
            raise StorageError("SQLite write failed: database is locked (by this process)")
        try:
            conn = self._write
            if not durable:  # in WAL mode: no fsync; the next durable commit syncs it
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                _begin(conn, _BEGIN_WAIT if deadline is None else deadline - time.monotonic())
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StorageError(f"SQLite write failed: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous=FULL")
        finally:
            self._write_lock.release()

    def _x(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return conn.execute(sql, params)

    def _xmany(self, conn: sqlite3.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        conn.executemany(sql, rows)

    def _query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._read is None:
            raise StorageError(f"{self!r} is not open")
        with self._read_lock:
            try:
                return fn(self._read)
            except sqlite3.Error as exc:
                raise StorageError(f"SQLite read failed: {exc}") from exc

    def point_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._point_lock:
            if self._point is None:
                raise StorageError(f"{self!r} is not open")
            try:
                return fn(self._point)
            except sqlite3.Error as exc:
                raise StorageError(f"SQLite read failed: {exc}") from exc

    def ping(self) -> None:
        """A query answers, and the file can still be written: on a full disk
        (or a mount gone read-only) reads work while every write fails."""
        super().ping()
        why = _why_unwritable(self.path)
        if why is not None:
            raise StorageError(f"SQLite database {str(self.path)!r} cannot be written: {why}")

    def ping_write(self, wait: float) -> None:
        """A write transaction can begin within ``wait`` seconds (no other process
        holds the file's write lock longer), then is rolled back."""
        with self._tx(durable=False, wait=wait):
            pass
