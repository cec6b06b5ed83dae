"""``fsg db upgrade`` and ``fsg db current``: the database schema, for operators and deployments.

The API and the dispatcher also upgrade at start; a deployment runs ``fsg db upgrade`` once first
(the compose ``migrate`` service, a Kubernetes init container) so that a bad migration stops the
roll-out before any server starts.
"""

from __future__ import annotations

from typing import Annotated

import typer

db_app = typer.Typer(help="the database schema (FSG_DATABASE_URL)", no_args_is_help=True)


def _database_url(url: str | None) -> str:
    from service.settings import Settings

    if url:
        return url
    settings = Settings()
    if settings.database_url is None:  # the default SQLite file lives in FSG_HOME, which may not exist yet
        settings.home.mkdir(parents=True, exist_ok=True)
    return settings.resolved_database_url


@db_app.command("upgrade")
def upgrade(
    revision: Annotated[str, typer.Option(help="the Alembic revision to reach")] = "head",
    url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default: FSG_DATABASE_URL)")] = None,
) -> None:
    """Migrate the database to ``revision`` (the newest by default); a no-op when it is there already."""
    from service.db.migrate import current_revision
    from service.db.migrate import upgrade as run_upgrade

    database_url = _database_url(url)
    run_upgrade(database_url, revision)
    # The URL may hold a password: print only the revision reached.
    typer.echo(f"database at revision {current_revision(database_url)}")


@db_app.command("current")
def current(
    url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default: FSG_DATABASE_URL)")] = None,
) -> None:
    """Print the database's revision and the newest one this package ships; exit 1 if they differ."""
    from service.db.migrate import current_revision, head_revision

    now, head = current_revision(_database_url(url)), head_revision()
    typer.echo(f"current {now or 'none (never migrated)'}, head {head}")
    if now != head:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
