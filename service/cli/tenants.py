"""``fsg tenant set | show | list``: per-tenant quotas, written straight into the database (an
operator's command, like ``fsg token create``). Unset values follow the ``FSG_TENANT_MAX_*`` defaults."""

from __future__ import annotations

from typing import Annotated, Any

import typer

tenant_app = typer.Typer(help="tenants' quotas and fair-share weights", no_args_is_help=True)

_FIELDS = ("max_running", "max_cpus", "max_gpus", "max_queued", "max_priority", "share")


def _database() -> Any:
    from service.db.engine import Database
    from service.db.migrate import upgrade
    from service.settings import Settings

    settings = Settings()
    if settings.database_url is None:
        settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    return settings, Database.from_url(settings.resolved_database_url)


def _describe(name: str, session: Any, settings: Any) -> str:
    from service.db import tenants
    from service.db.models import Tenant

    row = session.get(Tenant, name)
    effective = tenants.quota_of(row, tenants.default_quota(settings))
    parts = []
    for field in _FIELDS:
        value = getattr(effective, field)
        source = "" if row is not None and getattr(row, field) is not None else " (default)"
        parts.append(f"{field}={'none' if value is None else f'{value:g}'}{source}")
    return f"{name}: " + ", ".join(parts)


@tenant_app.command("set")
def set_(
    name: Annotated[str, typer.Argument(help="the tenant (as its tokens name it)")],
    max_running: Annotated[int | None, typer.Option(min=1, help="jobs on Ray at once")] = None,
    max_cpus: Annotated[float | None, typer.Option(min=0.0001, help="CPUs its running jobs may hold")] = None,
    max_gpus: Annotated[float | None, typer.Option(min=0, help="GPUs its running jobs may hold")] = None,
    max_queued: Annotated[int | None, typer.Option(min=0, help="jobs waiting; a submit over it is 429")] = None,
    max_priority: Annotated[int | None, typer.Option(help="the highest priority it may ask for")] = None,
    share: Annotated[float | None, typer.Option(min=0.0001, help="its weight in the fair share (default 1)")] = None,
    clear: Annotated[
        list[str] | None, typer.Option(help=f"back to the default: {', '.join(_FIELDS)} (repeatable)")
    ] = None,
) -> None:
    """Set a tenant's quotas; the options not given keep their values."""
    from service.db import tenants

    unknown = sorted(set(clear or []) - set(_FIELDS))
    if unknown:
        raise typer.BadParameter(
            f"unknown field {', '.join(unknown)}; one of {', '.join(_FIELDS)}", param_hint="--clear"
        )
    given = {
        "max_running": max_running,
        "max_cpus": max_cpus,
        "max_gpus": max_gpus,
        "max_queued": max_queued,
        "max_priority": max_priority,
        "share": share,
    }
    values: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    values.update({field: None for field in clear or []})
    settings, db = _database()
    try:
        with db.write() as session:
            tenants.set_quota(session, name, **values)
            typer.echo(_describe(name, session, settings))
    finally:
        db.dispose()


@tenant_app.command("show")
def show(name: Annotated[str, typer.Argument(help="the tenant")]) -> None:
    """A tenant's quotas in force, each marked when it is the default."""
    settings, db = _database()
    try:
        with db.read() as session:
            typer.echo(_describe(name, session, settings))
    finally:
        db.dispose()


@tenant_app.command("list")
def list_() -> None:
    """The tenants with their own quotas."""
    from service.db import tenants

    settings, db = _database()
    try:
        with db.read() as session:
            for row in tenants.list_tenants(session):
                typer.echo(_describe(row.name, session, settings))
    finally:
        db.dispose()


def register(app: typer.Typer) -> None:
    app.add_typer(tenant_app, name="tenant")
