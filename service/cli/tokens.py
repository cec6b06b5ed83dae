"""``fsg token create | list | revoke``: API tokens, straight in the database (an operator's commands).

Only a token's SHA-256 is stored: ``list`` shows ids, tenants, labels and dates, never a secret;
``revoke ID`` (an id or a unique prefix of one, as ``list`` prints it) makes the API refuse the token
(within the API's 10 s token cache)."""

from __future__ import annotations

from typing import Annotated, Any

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


def _database() -> Any:
    from service.db.engine import Database
    from service.db.migrate import upgrade
    from service.settings import Settings

    settings = Settings()
    upgrade(settings.resolved_database_url)
    return Database.from_url(settings.resolved_database_url)


@token_app.command("list")
def list_(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's tokens")] = None,
    all_: Annotated[bool, typer.Option("--all", help="also revoked and expired tokens")] = False,
) -> None:
    """One line per token: id, tenant, label, created, expires, state (no secret is stored to show)."""
    from service.db import reads
    from service.security import is_usable

    db = _database()
    try:
        with db.read() as session:
            rows = reads.list_tokens(session, tenant)
            lines = []
            for t in rows:
                state = "revoked" if t.revoked else "active" if is_usable(t) else "expired"
                if state != "active" and not all_:
                    continue
                expires = t.expires_at.strftime("%Y-%m-%d") if t.expires_at else "never"
                lines.append(
                    f"{t.id[:12]}  {t.tenant}  {t.name or '-'}  created {t.created_at:%Y-%m-%d %H:%M}  "
                    f"expires {expires}  {state}"
                )
    finally:
        db.dispose()
    typer.echo("\n".join(lines) if lines else "no tokens")


@token_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="a token id, or a unique prefix of one (fsg token list)")],
) -> None:
    """Revoke a token: the API answers 401 to it from then on (its 10 s cache aside)."""
    from service.db import reads
    from service.security import revoke_token

    if len(token_id) < 6:
        raise typer.BadParameter("give at least 6 characters of the id", param_hint="TOKEN_ID")
    db = _database()
    try:
        with db.write() as session:
            found = reads.tokens_by_id_prefix(session, token_id)
            if len(found) != 1:
                why = "no token has" if not found else "more than one token has"
                raise typer.BadParameter(f"{why} an id starting with {token_id!r}", param_hint="TOKEN_ID")
            (token,) = found
            revoke_token(session, token)
            typer.echo(f"revoked {token.id[:12]} ({token.tenant}, {token.name or 'no label'})")
    finally:
        db.dispose()


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
