"""The database handle: an engine plus write and read sessions, built from settings by whoever runs
(the app's lifespan, a dispatcher, a test), never at import time.

SQLite runs in WAL mode with every write transaction opened by ``BEGIN IMMEDIATE``: a deferred
transaction that reads and then writes can fail with "database is locked" when another connection
committed in between (the busy timeout does not cover that case); taking the write lock up front
makes writers queue instead. Read sessions stay ``DEFERRED`` so readers never wait for writers.
PostgreSQL gets a pooled engine with pre-ping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["UNAVAILABLE", "Database", "build_engine", "is_postgres", "is_sqlite"]

log = logging.getLogger("fsg.db")
T = TypeVar("T")

# What a database that is down, restarting or unreachable raises: worth retrying, unlike a bad value.
UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeout)


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def is_postgres(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "postgresql"


def build_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout, foreign keys and IMMEDIATE writes."""
    if not is_sqlite(url):
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        return create_engine(url, **kwargs)
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # pysqlite's own transaction handling would defer BEGIN to the first write; we issue BEGIN ourselves.
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30}, isolation_level=None, **kwargs
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class Database:
    """An engine with a writer and a reader session factory.

    ``with db.write() as s:`` is one transaction that commits on success and rolls back on error;
    ``db.read()`` likewise for reads (DEFERRED on SQLite). Objects stay usable after commit.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = is_sqlite(engine)
        # SQLite has one writer at a time. Queueing this process's writers on a lock, instead of in
        # SQLite's busy handler, keeps a burst of requests from holding every pooled connection while
        # they wait (and exhausting the pool); other processes still meet the busy timeout.
        self._write_lock = threading.Lock() if self.sqlite else None
        reader_bind = engine.execution_options(sqlite_begin="DEFERRED") if self.sqlite else engine
        self._writer = sessionmaker(engine, expire_on_commit=False)
        self._reader = sessionmaker(reader_bind, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        return cls(build_engine(url, **kwargs))

    @contextmanager
    def write(self, *, serialize: bool = True) -> Iterator[Session]:
        """A write transaction. On SQLite, ``serialize`` queues this process's writers on a lock; pass
        False where the transaction is opened and closed on different threads (a request-scoped
        dependency), because a thread waiting for the lock could then starve the holder."""
        if self._write_lock is None or not serialize:
            with self._writer() as session, session.begin():
                yield session
            return
        with self._write_lock, self._writer() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session, session.begin():
            yield session

    def retrying(self, work: Callable[[Session], T], *, within_s: float, write: bool = True) -> T:
        """``work(session)`` in one transaction, tried again while the database is unavailable.

        For writers that must not lose what they write to a short outage (a run's metrics, a
        dispatcher's verdict): each try is a whole transaction, so a retry never half-applies.

        Raises:
            The last ``UNAVAILABLE`` error once ``within_s`` seconds have passed without success.
        """
        deadline = time.monotonic() + within_s
        delay = 0.25
        while True:
            try:
                with self.write() if write else self.read() as session:
                    return work(session)
            except UNAVAILABLE as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("database unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def dispose(self) -> None:
        self.engine.dispose()
