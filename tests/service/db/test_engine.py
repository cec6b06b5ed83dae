"""The database handle's retrying writer: it rides out an unavailable database, and only that."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from service.db.engine import Database


def _unavailable() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("connection refused"))


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Any:
    db = Database.from_url(f"sqlite:///{tmp_path / 'x.db'}")
    with db.write() as session:
        session.execute(text("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
    yield db
    db.dispose()


def test_retrying_writes_once_the_database_answers(sqlite_db: Database) -> None:
    calls = []

    def work(session: Any) -> int:
        calls.append(1)
        if len(calls) < 3:
            raise _unavailable()
        session.execute(text("INSERT INTO t (v) VALUES (7)"))
        return len(calls)

    assert sqlite_db.retrying(work, within_s=10) == 3
    with sqlite_db.read() as session:
        assert session.execute(text("SELECT v FROM t")).scalars().all() == [7]


def test_retrying_gives_up_after_its_window(sqlite_db: Database) -> None:
    calls = []

    def work(session: Any) -> None:
        calls.append(1)
        raise _unavailable()

    with pytest.raises(OperationalError):
        sqlite_db.retrying(work, within_s=0.6)
    assert 2 <= len(calls) <= 4  # 0.25 s, then 0.5 s would pass the window


def test_retrying_does_not_retry_what_the_data_caused(sqlite_db: Database) -> None:
    calls = []

    def work(session: Any) -> None:
        calls.append(1)
        session.execute(text("INSERT INTO t (v) VALUES (1)"))
        session.execute(text("INSERT INTO t (v) VALUES (1)"))

    with pytest.raises(IntegrityError):
        sqlite_db.retrying(work, within_s=10)
    assert len(calls) == 1
    with sqlite_db.read() as session:  # the failed transaction left nothing behind
        assert session.execute(text("SELECT count(*) FROM t")).scalar() == 0
