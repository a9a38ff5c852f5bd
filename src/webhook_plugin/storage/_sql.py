"""What the SQLite and PostgreSQL delivery stores share: the SQL of every operation.

Statements are written once, with ``?`` placeholders and SQL that both
databases accept (``ON CONFLICT``, ``RETURNING``); a backend supplies its
connections and transactions, its placeholder style and the few statements
that differ (claiming, which PostgreSQL does with ``FOR UPDATE SKIP LOCKED``).

The delivery store owns its tables (deliveries, attempts, webhook settings)
and their migrations. Another store may keep its own tables in the same
database (the reference runtime's chat store does): the *SQL seam* below
lends it the connections, one transaction for both, its own migrations
(``schema_versions`` holds a version per component), and
:meth:`SQLStore.queue_deliveries`, so that a chat message and the events it
queued commit together.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from ..payloads import OperationalEvent
from ._attempts_sql import AttemptsSQL
from ._log_sql import LogSQL
from ._outbox_sql import OutboxSQL
from ._settings_sql import SettingsSQL
from .base import AttemptResult

__all__ = ["SQLStore"]

T = TypeVar("T")


class SQLStore(OutboxSQL, AttemptsSQL, LogSQL, SettingsSQL):
    """The operations of :class:`~webhook_plugin.storage.base.DeliveryStore` in
    portable SQL, put together from parts that each keep one job and never
    call one another: the inserts (:mod:`._outbox_sql`), the claims
    and attempts (:mod:`._attempts_sql`), the delivery log (:mod:`._log_sql`)
    and the settings (:mod:`._settings_sql`). What needs two of them in one
    transaction is composed here."""

    #: whether :meth:`wait_for_new` can wake a worker in another process
    supports_notify: ClassVar[bool] = False
    #: how many writes of one process may run at once (the engine's write lane):
    #: one, unless the database lets writes to different rows go together
    writers: ClassVar[int] = 1

    def ping(self) -> None:
        """Raise :class:`StorageError` when the database does not answer a query."""
        self._query(lambda c: self._x(c, "SELECT 1").fetchone())

    # the SQL seam, for another component's tables in the same database ------------------

    #: ``sqlite`` or ``postgresql``: which DDL a component's migrations use
    dialect: ClassVar[str]

    def read(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(connection)`` for a read."""
        return self._query(fn)

    #: whether :meth:`point_read` is cheap enough, and never waits for a writer,
    #: so that a caller may run it on its event loop rather than in a thread
    point_reads_inline: ClassVar[bool] = False

    def point_read(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(connection)`` for a read of a row or two by key (a connection
        no long read holds, where the backend has one)."""
        return self._query(fn)

    @property
    def lock_row(self) -> str:
        """Appended to a SELECT in a transaction, holds its rows until it ends
        (SQLite's transactions hold the whole database already)."""
        return self._LOCK_ROW

    def execute(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """One statement with ``?`` placeholders; the cursor."""
        return self._x(conn, sql, params)

    def execute_many(self, conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._xmany(conn, sql, rows)

    @abstractmethod
    def migrate(self, component: str, scripts: Sequence[str]) -> None:
        """Bring ``component``'s tables to ``len(scripts)``: run the scripts after
        the version stored for it, each with the version it reaches, in one
        transaction, serialised with every other process doing the same."""

    def wait_for_new(self, timeout: float) -> bool:
        """Block until another process queues deliveries (backends with notify only)."""
        raise NotImplementedError

    def record_attempts(self, results: Sequence[AttemptResult]) -> list[OperationalEvent]:
        """Write the attempts' results, and queue the operational events they
        caused, in one transaction."""
        with self._tx(durable=False) as conn:
            events, queued = self._record(conn, results)
            self.queue_deliveries(conn, queued)
        return events
