"""The dependencies every route declares: sessions, settings, storage, the caller's tenant, and the
tenant's job by path id (404 for a missing job and for another tenant's job alike)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.api.errors import JobNotFound, invalid
from service.db import reads
from service.db.engine import Database
from service.db.models import Job
from service.security import hash_token, verify_token
from service.settings import Settings
from service.storage import Storage

__all__ = [
    "DatabaseDep",
    "JobDep",
    "JobForUpdateDep",
    "LimitDep",
    "ReadSessionDep",
    "SessionDep",
    "SettingsDep",
    "StorageDep",
    "TenantDep",
    "is_job_id",
]

DEFAULT_PAGE_SIZE = 50
# Job ids are ours (hex uuids); anything else cannot name a job, so it is "not found" without a query
# (and never reaches the database with bytes it refuses, like NUL on PostgreSQL).
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def is_job_id(value: str) -> bool:
    """Whether ``value`` could name a job at all (ids that cannot are "not found" without a query)."""
    return _JOB_ID.match(value) is not None


# The getters are async: a sync dependency costs a thread-pool hop per request.
async def get_database(request: Request) -> Database:
    return request.app.state.db


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_storage(request: Request) -> Storage:
    return request.app.state.storage


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]


def _write_session(db: DatabaseDep) -> Iterator[Session]:
    # FastAPI enters and leaves this generator on different pool threads: no in-process write lock.
    with db.write(serialize=False) as session:
        yield session


def _read_session(db: DatabaseDep) -> Iterator[Session]:
    with db.read() as session:
        yield session


# scope="function": the transaction ends when the handler returns, before the response is sent, so a
# client never sees 201 for a row whose commit then failed, and streams never hold a session open.
SessionDep = Annotated[Session, Depends(_write_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(_read_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="an API token: `fsg token create` prints one")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


# Verified tokens are remembered for a few seconds: authentication then costs no database read per
# request. A revoked token keeps working for at most this long in each API process.
TOKEN_CACHE_S = 10.0


def _lookup_tenant(db: Database, secret: str) -> str | None:
    # A short read of its own, so authentication never holds the handler's (possibly write) session.
    with db.read() as session:
        token = verify_token(session, secret)
        return token.tenant if token is not None else None


async def get_tenant(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)], db: DatabaseDep
) -> str:
    """The tenant of the request's bearer token; 401 when it is missing, unknown, expired or revoked."""
    if credentials is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer fsg_...'")
    cache: dict[str, tuple[str, float]] = request.app.state.token_cache
    key = hash_token(credentials.credentials)
    now = time.monotonic()
    hit = cache.get(key)
    if hit is not None and hit[1] > now:
        return hit[0]
    tenant = await run_in_threadpool(_lookup_tenant, db, credentials.credentials)
    if tenant is None:
        cache.pop(key, None)
        raise _unauthorized("invalid, expired or revoked token")
    if len(cache) > 10_000:
        cache.clear()
    cache[key] = (tenant, now + TOKEN_CACHE_S)
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]


def get_job(job_id: str, tenant: TenantDep, session: ReadSessionDep) -> Job:
    """The tenant's job ``job_id``, read-only."""
    job = reads.get_job(session, job_id, tenant) if _JOB_ID.match(job_id) else None
    if job is None:
        raise JobNotFound(job_id)
    return job


def get_job_for_update(job_id: str, tenant: TenantDep, session: SessionDep) -> Job:
    """The tenant's job ``job_id`` in the write session, its row locked (PostgreSQL) until commit."""
    job = reads.get_job(session, job_id, tenant) if _JOB_ID.match(job_id) else None
    if job is None:
        raise JobNotFound(job_id)
    session.refresh(job, with_for_update=True)
    return job


JobDep = Annotated[Job, Depends(get_job)]
JobForUpdateDep = Annotated[Job, Depends(get_job_for_update)]


def get_limit(
    settings: SettingsDep,
    limit: Annotated[int | None, Query(ge=1, description="page size, at most the server's max_page_size")] = None,
) -> int:
    """The page size: the bound comes from settings, so it is checked here rather than in the signature."""
    if limit is None:
        return min(DEFAULT_PAGE_SIZE, settings.max_page_size)
    if limit > settings.max_page_size:
        raise invalid(
            ("query", "limit"),
            f"Input should be less than or equal to {settings.max_page_size}",
            "less_than_equal",
        )
    return limit


LimitDep = Annotated[int, Depends(get_limit)]
