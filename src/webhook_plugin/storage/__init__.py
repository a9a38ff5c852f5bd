"""Storage backends: SQLite (embedded default) and PostgreSQL (several machines).

:func:`open_store` picks one from a database URL.
"""

from __future__ import annotations

from .base import Store

__all__ = ["Store", "open_store"]


def open_store(database: str) -> Store:
    """Build (not yet open) the store a database URL names.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite://:memory:``
    is refused (an outbox must survive a restart), ``postgresql://...``.
    """
    from ..exceptions import ConfigError

    if database.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        path = database.removeprefix("sqlite://")
        if path.startswith("/"):
            path = path[1:]
        if not path or path == ":memory:":
            raise ConfigError(
                f"database {database!r}: give a file path, e.g. sqlite:///webhook-plugin.db"
            )
        return SQLiteStore(path)
    if database.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(database)
    raise ConfigError(
        f"database {database!r}: use sqlite:///FILE or postgresql://USER@HOST/DBNAME"
    )
