"""The PostgreSQL backend: many runtimes and delivery workers, one database.

psycopg 3's async API is asyncio-only, so this store uses its *synchronous*
API from worker threads (the engine calls it through anyio with a bounded
limiter), with a ``psycopg_pool.ConnectionPool``; trio keeps working.

Claiming uses ``FOR UPDATE SKIP LOCKED``: concurrent workers never lease the
same delivery, and a worker that dies leaves its leases to expire. New
deliveries ``NOTIFY`` idle workers in the inserting transaction (so the
notification arrives only once they are committed).

The schema is created and migrated by the program itself, under an advisory
lock so that processes starting together do not race.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Final, TypeVar

from ..exceptions import StorageError
from ._sql import SQLStore

__all__ = ["PostgresStore", "drop_schema"]

T = TypeVar("T")

CHANNEL: Final = "webhook_plugin_deliveries"
_LOCK_KEY: Final = 0x77686B70  # "whkp": serialises migrations
#: seconds a call waits for a pooled connection while the server answers...
_WAIT: Final = 5.0
#: ...and while it does not (a call found a connection broken, or none came):
#: the pool reconnects in the background, and a request waiting for it would
#: only hold a thread, so that every request behind it waits too, instead of
#: answering 503 at once
_WAIT_WHILE_DOWN: Final = 0.1
#: a lost connection is reconnected with backoff (1, 2, 4 s...) for this long,
#: then the pool gives it up and the next request starts again at once: left
#: at the pool's default (5 minutes of doubling delays), the API would stay
#: down for up to as long again as the server was
_RECONNECT: Final = 2.0

#: the delivery store's tables (the runtime's chat store has its own migrations)
_MIGRATIONS: list[str] = [
    # version 1 (IF NOT EXISTS: databases made before the stores were split
    # already hold these tables)
    """
    CREATE TABLE IF NOT EXISTS deliveries (
        id BIGSERIAL PRIMARY KEY,
        webhook_id TEXT NOT NULL UNIQUE,
        agent_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        round_start INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        lease_owner TEXT,
        last_status_code INTEGER,
        last_error TEXT,
        updated_at DOUBLE PRECISION
    );
    CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at)
        WHERE status = 'pending';
    CREATE INDEX IF NOT EXISTS deliveries_agent ON deliveries (agent_id, status, id);
    CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status, id);
    CREATE TABLE IF NOT EXISTS attempts (
        delivery_id BIGINT NOT NULL,
        attempt INTEGER NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        duration_ms DOUBLE PRECISION NOT NULL,
        status_code INTEGER,
        error TEXT,
        response_excerpt TEXT,
        PRIMARY KEY (delivery_id, attempt)
    );
    CREATE TABLE IF NOT EXISTS webhook_settings (
        agent_id TEXT PRIMARY KEY,
        data BYTEA NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        disabled_reason TEXT,
        failing_since DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL
    );
    """,
    # version 2: each event's place in its conversation, and ordered sending
    """
    ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS conversation_id TEXT;
    ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS sequence BIGINT;
    ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS ordered INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS head_since DOUBLE PRECISION;
    ALTER TABLE webhook_settings ADD COLUMN IF NOT EXISTS failing_notified INTEGER NOT NULL
        DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS round_trigger TEXT;
    ALTER TABLE attempts ADD COLUMN IF NOT EXISTS url TEXT;
    ALTER TABLE attempts ADD COLUMN IF NOT EXISTS response_headers TEXT;
    ALTER TABLE attempts ADD COLUMN IF NOT EXISTS trigger TEXT;
    CREATE TABLE IF NOT EXISTS conversation_sequences (
        agent_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        last BIGINT NOT NULL,
        PRIMARY KEY (agent_id, conversation_id)
    );
    CREATE INDEX IF NOT EXISTS deliveries_lane ON deliveries
        (agent_id, conversation_id, sequence) WHERE status = 'pending';
    CREATE INDEX IF NOT EXISTS deliveries_conversation ON deliveries
        (agent_id, conversation_id, id);
    """,
]


def _psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise StorageError(
            "the PostgreSQL backend needs psycopg: pip install 'webhook-plugin[postgres]'"
        ) from exc
    return psycopg, psycopg_pool


class PostgresStore(SQLStore):
    """A :class:`~webhook_plugin.storage.base.Store` on a PostgreSQL database.

    :param url: a libpq connection URL (``postgresql://user@host:5432/db``).
    :param schema: the schema holding the tables (created when missing).
    :param pool_size: connections kept open.
    """

    _GREATEST: ClassVar[str] = "GREATEST"
    _LOCK_ROW: ClassVar[str] = " FOR UPDATE"
    _SHARE_ROW: ClassVar[str] = " FOR SHARE"
    _BODY_LENGTH: ClassVar[str] = "octet_length(body)"
    #: the transaction's start on the server's clock
    _NOW: ClassVar[str] = "EXTRACT(EPOCH FROM now())::double precision"
    _STATEMENT_NOW: ClassVar[str] = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"
    dialect: ClassVar[str] = "postgresql"
    _CLAIM: ClassVar[str] = (
        "WITH due AS (SELECT id FROM deliveries WHERE status = 'pending'"
        " AND next_attempt_at <= {now} AND lease_until <= {now}{skip}{in_turn}"
        " ORDER BY next_attempt_at LIMIT ? FOR UPDATE SKIP LOCKED)"
        " UPDATE deliveries AS d SET lease_until = {now} + ?, lease_owner = ?,"
        " head_since = COALESCE(d.head_since, {now}) FROM due"
        " WHERE d.id = due.id"
        " RETURNING d.id, d.webhook_id, d.agent_id, d.event_type, d.body, d.created_at,"
        " d.attempts, d.round_start, d.ordered, {now} - d.head_since"
    )
    supports_notify: ClassVar[bool] = True
    #: row locks let writes to different rows go together: two of the engine's
    #: at once, leaving two of the pool's four connections to the chat's writes
    #: (which bound their own wait) and to reads
    writers: ClassVar[int] = 2

    def __init__(self, url: str, *, schema: str = "webhook_plugin", pool_size: int = 4) -> None:
        if not schema.isidentifier():
            raise StorageError(f"schema {schema!r} must be a plain identifier")
        self.url = url
        self.schema = schema
        self._pool_size = pool_size
        self._pool: Any = None
        self._listener: Any = None
        self._sql_cache: dict[str, str] = {}
        self._down = False

    def __repr__(self) -> str:
        # never the URL: it may hold a password
        return f"PostgresStore(schema={self.schema!r})"

    # lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        if self._pool is not None:
            return
        psycopg, psycopg_pool = _psycopg()
        try:
            self.migrate("delivery", _MIGRATIONS)
            self._pool = psycopg_pool.ConnectionPool(
                self.url,
                min_size=1,
                max_size=self._pool_size,
                reconnect_timeout=_RECONNECT,
                kwargs={"options": f"-c search_path={self.schema}", "autocommit": True},
                open=True,
            )
            self._pool.wait(timeout=10)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StorageError(f"cannot open PostgreSQL database: {_safe(exc)}") from exc

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def migrate(self, component: str, scripts: Sequence[str]) -> None:
        psycopg, _ = _psycopg()
        try:
            with psycopg.connect(self.url, autocommit=True) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                conn.execute(f"SET LOCAL search_path = {self.schema}")
                self._migrate_in(conn, component, scripts)
        except psycopg.Error as exc:
            raise StorageError(f"cannot migrate PostgreSQL database: {_safe(exc)}") from exc

    # plumbing ----------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        converted = self._sql_cache.get(sql)
        if converted is None:
            converted = self._sql_cache[sql] = sql.replace("%", "%%").replace("?", "%s")
        return converted

    def _x(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        return conn.execute(self._sql(sql), params)

    def _xmany(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with conn.cursor() as cur:
            cur.executemany(self._sql(sql), list(rows))

    @contextmanager
    def _tx(self, *, durable: bool = True, wait: float | None = None) -> Iterator[Any]:
        if self._pool is None:
            raise StorageError(f"{self!r} is not open")
        psycopg, _ = _psycopg()
        try:
            with self._connection() as conn:
                if not durable:
                    conn.execute("SET LOCAL synchronous_commit TO OFF")
                if wait is not None:  # for a row lock another transaction holds
                    conn.execute(f"SET LOCAL lock_timeout = {max(1, int(wait * 1000))}")
                yield conn
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL write failed: {_safe(exc)}") from exc

    def _query(self, fn: Callable[[Any], T]) -> T:
        if self._pool is None:
            raise StorageError(f"{self!r} is not open")
        psycopg, _ = _psycopg()
        try:
            with self._connection() as conn:
                return fn(conn)
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL read failed: {_safe(exc)}") from exc

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection in a transaction; fails fast while the server is down."""
        psycopg, psycopg_pool = _psycopg()
        conn = None
        try:
            with (
                self._pool.connection(timeout=_WAIT_WHILE_DOWN if self._down else _WAIT) as conn,
                conn.transaction(),
            ):
                yield conn
        except psycopg.Error as exc:
            if isinstance(exc, psycopg_pool.PoolTimeout) or (conn is not None and conn.closed):
                self._down = True
            raise
        self._down = False

    def ping_write(self, wait: float) -> None:
        """A transaction that may write can begin (not a read-only standby, not
        out of disk for its WAL), within ``wait`` seconds."""
        with self._tx(durable=False, wait=wait) as conn:
            conn.execute(f"SET LOCAL statement_timeout = {max(1, int(wait * 1000))}")
            conn.execute("SELECT txid_current()")

    def _claim_params(
        self, limit: int, lease_seconds: float, owner: str, skip: tuple[str, ...]
    ) -> tuple[Any, ...]:
        return (*skip, limit, lease_seconds, owner)

    def _after_insert(self, conn: Any) -> None:
        conn.execute(f"NOTIFY {CHANNEL}")

    # wake-ups ------------------------------------------------------------------------------

    def wait_for_new(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a new-deliveries notification."""
        psycopg, _ = _psycopg()
        try:
            if self._listener is None:
                self._listener = psycopg.connect(self.url, autocommit=True)
                self._listener.execute(f"LISTEN {CHANNEL}")
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except psycopg.Error as exc:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            raise StorageError(f"PostgreSQL LISTEN failed: {_safe(exc)}") from exc


def _safe(exc: BaseException) -> str:
    """An error's first line, which libpq never fills with the password."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def drop_schema(url: str, schema: str) -> None:
    """Drop a schema and everything in it (tests and benchmarks)."""
    psycopg, _ = _psycopg()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
