"""Alembic's entry point: runs the migrations on the connection ``service.db.migrate`` hands over, or,
from the ``alembic`` command line, on ``-x url=...`` / ``FSG_DATABASE_URL`` / the SQLite file under
``FSG_HOME``. Not imported by the service; Alembic executes it.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

from service.db.migrate import migration_engine
from service.db.models import Base, UTCDateTime

config = context.config


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write our column types as plain SQLAlchemy types, so scripts never import the models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=Base.metadata,
        # Batch operations (copy-and-move on SQLite, plain ALTER elsewhere) in every generated script,
        # so one script serves both backends whoever generated it.
        render_as_batch=True,
        render_item=_render_item,
        compare_type=True,
        **kwargs,
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from service.settings import Settings

    return Settings().resolved_database_url


def _run(connection: Connection) -> None:
    # SQLite can roll DDL back too: one transaction (BEGIN IMMEDIATE, see engine.py) for the whole run,
    # so a failed upgrade leaves the previous schema and a concurrent upgrader waits, then finds head.
    _configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if config.config_file_name is not None and config.attributes.get("connection") is None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        _configure(url=_url(), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = migration_engine(_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


main()
