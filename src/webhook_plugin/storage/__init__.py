"""Storage backends: SQLite (embedded default) and PostgreSQL (several machines).

:func:`open_store` picks one from a database URL.
"""

from __future__ import annotations

from .base import Store

__all__ = ["Store", "open_store"]


def open_store(database: str) -> Store:
    """Build (not yet open) the store a database URL names.

    ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (``:memory:`` is
    refused: an outbox must survive a restart), or
    ``postgresql://user@host:5432/db[?schema=NAME]`` (default schema
    ``webhook_plugin``).
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
        from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

        from .postgres import PostgresStore

        # ?schema=NAME is ours (libpq does not know it): the schema for our tables
        parts = urlsplit(database)
        query = parse_qsl(parts.query)
        schema = next((v for k, v in query if k == "schema"), "webhook_plugin")
        rest = urlencode([(k, v) for k, v in query if k != "schema"])
        return PostgresStore(urlunsplit(parts._replace(query=rest)), schema=schema)
    raise ConfigError(f"database {database!r}: use sqlite:///FILE or postgresql://USER@HOST/DBNAME")
