"""Schema migrations, run from code: ``upgrade(url)`` at every start, no ``alembic.ini`` needed.

The scripts live in ``service/migrations`` (shipped inside the package). Concurrent starts are safe:
on PostgreSQL the whole upgrade runs under an advisory lock, on SQLite inside one ``BEGIN IMMEDIATE``
transaction; whoever comes second finds the schema at head and does nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from service.db.engine import build_engine, is_postgres, is_sqlite

__all__ = ["MIGRATIONS_DIR", "current_revision", "downgrade", "head_revision", "migration_engine", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# One fixed 64-bit key for pg_advisory_lock, derived from a name so it cannot collide by accident
# with another application's small integer keys in the same database.
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"fsg.service.migrations").digest()[:8], "big", signed=True)


def migration_engine(url: str) -> Engine:
    """An engine without a pool (migrations hold one connection, once) and, for SQLite, with the
    service's pragmas and ``BEGIN IMMEDIATE``."""
    if is_sqlite(url):
        return build_engine(url, poolclass=NullPool)
    return create_engine(url, poolclass=NullPool)


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    # ConfigParser interpolates "%": escape it in the path.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


@contextmanager
def _locked_connection(url: str) -> Iterator[Connection]:
    """A connection that holds the migration lock (PostgreSQL) until the block ends.

    The advisory lock belongs to the database session, not to a transaction, so it outlives the
    commit below and Alembic's own transaction. If the block raises, closing the connection (there
    is no pool to keep it) releases the lock.
    """
    engine = migration_engine(url)
    try:
        with engine.connect() as connection:
            if not is_postgres(engine):
                yield connection
                return
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
            connection.commit()
            yield connection
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
            connection.commit()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (default: the newest). A no-op when it is there."""
    with _locked_connection(url) as connection:
        command.upgrade(_config(connection), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` back to ``revision`` (``"base"``: no tables). For developers and tests."""
    with _locked_connection(url) as connection:
        command.downgrade(_config(connection), revision)


def current_revision(url: str) -> str | None:
    """The database's revision, or None when it was never migrated."""
    engine = migration_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision the installed package ships (what ``upgrade`` migrates to)."""
    return ScriptDirectory.from_config(_config()).get_current_head()
