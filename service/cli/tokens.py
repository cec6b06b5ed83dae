"""``fsg token create``: API tokens, written straight into the database (an operator's command)."""

from __future__ import annotations

from typing import Annotated

import typer

token_app = typer.Typer(help="API tokens", no_args_is_help=True)


@token_app.command("create")
def create(
    tenant: Annotated[str, typer.Option(help="the tenant whose jobs the token can see")] = "default",
    name: Annotated[str, typer.Option(help="a label")] = "",
    ttl_days: Annotated[int | None, typer.Option(help="days until it expires (FSG_TOKEN_TTL_DAYS)")] = None,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from service.db.engine import Database
    from service.db.migrate import upgrade
    from service.security import create_token
    from service.settings import Settings

    settings = Settings()
    upgrade(settings.resolved_database_url)
    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.write() as session:
            token = create_token(session, tenant, name, ttl_days or settings.token_ttl_days)
    finally:
        db.dispose()
    typer.echo(token)


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
