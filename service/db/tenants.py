"""Tenants' quotas: the defaults of the settings, overridden per tenant by a ``tenants`` row
(``fsg tenant set``). Read by the claim (``queue.claim_next``) and by the API at submit."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Tenant
from service.db.scheduling import Quota
from service.settings import Settings

__all__ = ["QUOTA_FIELDS", "Quota", "default_quota", "get", "list_tenants", "quota_of", "quotas", "set_quota"]

QUOTA_FIELDS = tuple(f.name for f in fields(Quota))


def default_quota(settings: Settings) -> Quota:
    """What every tenant gets unless its row says otherwise (``FSG_TENANT_MAX_*``)."""
    return Quota(
        max_running=settings.tenant_max_running,
        max_cpus=settings.tenant_max_cpus,
        max_gpus=settings.tenant_max_gpus,
        max_queued=settings.tenant_max_queued,
        max_priority=settings.tenant_max_priority,
    )


def quota_of(row: Tenant | None, defaults: Quota) -> Quota:
    """The row's values where set, ``defaults`` elsewhere."""
    if row is None:
        return defaults
    values = {name: getattr(row, name) for name in QUOTA_FIELDS}
    return Quota(**{name: getattr(defaults, name) if v is None else v for name, v in values.items()})


def quotas(session: Session, names: set[str], defaults: Quota) -> dict[str, Quota]:
    """Each tenant's quota."""
    rows = {t.name: t for t in session.scalars(select(Tenant).where(Tenant.name.in_(sorted(names))))}
    return {name: quota_of(rows.get(name), defaults) for name in names}


def get(session: Session, name: str, defaults: Quota) -> Quota:
    return quota_of(session.get(Tenant, name), defaults)


def set_quota(session: Session, name: str, **values: Any) -> Tenant:
    """Set (a value) or clear (None: back to the default) the given quota fields of tenant ``name``."""
    unknown = set(values) - set(QUOTA_FIELDS)
    if unknown:
        raise ValueError(f"unknown quota fields: {', '.join(sorted(unknown))}")
    row = session.get(Tenant, name, with_for_update=True) or Tenant(name=name)
    for field, value in values.items():
        setattr(row, field, value)
    session.add(row)
    session.flush()
    return row


def list_tenants(session: Session) -> list[Tenant]:
    """The tenants with overrides, by name."""
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))
