"""Shared service fixtures: a real, migrated, empty database per test, on SQLite and on PostgreSQL.

Migrations run once per session into a template; each test gets a copy (procrastinate's pattern):
SQLite copies the template file into ``tmp_path``; PostgreSQL runs ``CREATE DATABASE t TEMPLATE tmpl``
and drops ``t`` after the test. PostgreSQL is ``FSG_TEST_POSTGRES_URL`` (default: the local server,
database ``test``, which is only used to create and drop the others). When it is unreachable the
PostgreSQL tests are skipped with the reason, unless ``FSG_REQUIRE_POSTGRES=1`` (CI) makes that an error.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL, make_url

from service.db.engine import Database
from service.db.migrate import upgrade

POSTGRES_URL = os.environ.get("FSG_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


class PostgresServer:
    """Creates and drops the per-test databases through one autocommit connection."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.admin = psycopg.connect(_conninfo(url), autocommit=True, connect_timeout=3)

    def url_of(self, database: str) -> str:
        return self.url.set(database=database).render_as_string(hide_password=False)

    def create(self, template: str = "template0") -> str:
        """A new database copied from ``template``; returns its name."""
        name = f"fsg_test_{uuid.uuid4().hex[:16]}"
        self.admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        )
        return name

    def drop(self, name: str) -> None:
        # FORCE (PostgreSQL 13+): a test that leaked a connection must not fail the teardown.
        self.admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _conninfo(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    url = make_url(POSTGRES_URL)
    try:
        server = PostgresServer(url)
    except psycopg.OperationalError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    else:
        reason = None
    if reason is not None:  # outside the except block: no chained traceback in the report
        where = url.render_as_string(hide_password=True)
        if os.environ.get("FSG_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL at {where} is unreachable and FSG_REQUIRE_POSTGRES=1: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL at {where} is unreachable ({reason}); FSG_REQUIRE_POSTGRES=1 makes this an error")
    try:
        yield server
    finally:
        server.admin.close()


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> Iterator[str]:
    """A database migrated to head, once per session, that per-test databases are copied from."""
    name = postgres_server.create()
    try:
        # upgrade() leaves no connection open (no pool), so the template can be copied.
        upgrade(postgres_server.url_of(name))
        yield name
    finally:
        postgres_server.drop(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite_template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def _copy_sqlite(source: Path, target: Path) -> None:
    # The backup API copies a consistent image whatever the WAL state of the source.
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database migrated to head, fresh for this test."""
    if request.param == "sqlite":
        path = tmp_path / "fsg.db"
        _copy_sqlite(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create(template=request.getfixturevalue("postgres_template"))
    try:
        yield server.url_of(name)
    finally:
        server.drop(name)


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database that was never migrated (no tables at all)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fsg.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create()
    try:
        yield server.url_of(name)
    finally:
        server.drop(name)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A ``Database`` on the test's migrated database."""
    database = Database.from_url(db_url)
    try:
        yield database
    finally:
        database.dispose()
