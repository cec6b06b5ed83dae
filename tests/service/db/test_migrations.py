"""Alembic head equals the ORM models, on SQLite and PostgreSQL; upgrades are idempotent, reversible
and safe to run concurrently; the scripts ship inside the package."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from service.db.engine import Database
from service.db.migrate import MIGRATIONS_DIR, current_revision, downgrade, head_revision, migration_engine, upgrade
from service.db.models import Base, Token
from tests.service.conftest import PostgresServer

TABLES = {"tokens", "jobs", "job_events", "trials", "metrics", "checkpoints", "dispatchers", "tenants"}


def _differences(url: str) -> list:
    engine = migration_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = migration_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_head_matches_the_models(db_url: str) -> None:
    assert current_revision(db_url) == head_revision()
    assert _differences(db_url) == []


def test_upgrade_from_nothing(empty_db_url: str) -> None:
    assert current_revision(empty_db_url) is None
    upgrade(empty_db_url)
    assert current_revision(empty_db_url) == head_revision()
    assert _tables(empty_db_url) == TABLES
    assert _differences(empty_db_url) == []


def test_upgrade_again_is_a_no_op(db_url: str) -> None:
    db = Database.from_url(db_url)
    try:
        with db.write() as session:
            session.add(Token(tenant="t", name="kept", token_hash="f" * 64))
    finally:
        db.dispose()
    upgrade(db_url)
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    db = Database.from_url(db_url)
    try:
        with db.read() as session:
            assert session.scalars(select(Token.name)).all() == ["kept"]
    finally:
        db.dispose()


def test_downgrade_to_base_and_back(db_url: str) -> None:
    downgrade(db_url, "base")
    assert current_revision(db_url) is None
    assert _tables(db_url) == set()
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    assert _tables(db_url) == TABLES
    assert _differences(db_url) == []


@pytest.mark.postgres
def test_concurrent_upgrades_on_postgres(postgres_server: PostgresServer) -> None:
    """Services starting together all migrate: one does the work under the advisory lock, the others
    wait for it and find head. Without the lock they race to create the same tables."""
    name = postgres_server.create()
    url = postgres_server.url_of(name)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def start_service() -> None:
        try:
            start.wait(10)
            upgrade(url)
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    try:
        threads = [threading.Thread(target=start_service, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
        assert not any(thread.is_alive() for thread in threads), "an upgrade hung"
        assert not errors, errors
        assert current_revision(url) == head_revision()
        assert _differences(url) == []
    finally:
        postgres_server.drop(name)


def test_scripts_ship_inside_the_package() -> None:
    """``upgrade`` finds its scripts next to the installed ``service`` package, not in the checkout."""
    import service

    assert MIGRATIONS_DIR.parent == Path(service.__file__).resolve().parent
    for name in ("__init__.py", "env.py", "script.py.mako", "versions/__init__.py"):
        assert (MIGRATIONS_DIR / name).is_file(), name
    head = head_revision()
    assert head is not None and list((MIGRATIONS_DIR / "versions").glob(f"{head}_*.py"))
