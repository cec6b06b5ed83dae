"""``/v1/jobs/{id}/logs``: the job's log text; ``?follow=true`` streams new lines until the job ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import DatabaseDep, JobDep, StorageDep
from service.api.streams import StreamSlots
from service.db.engine import Database
from service.db.models import Job
from service.db.states import TERMINAL
from service.schemas.errors import ErrorRead
from service.storage import Storage

router = APIRouter(prefix="/jobs/{job_id}/logs", tags=["logs"])

POLL_S = 0.5  # how often a followed log is checked for new bytes and the job for its end


def _job_state(db: Database, job_id: str) -> str | None:
    with db.read() as session:
        job = session.get(Job, job_id)
        return job.state if job is not None else None


async def follow_log(
    db: Database, storage: Storage, job_id: str, path: Path, request: Request | None = None
) -> AsyncIterator[bytes]:
    """Everything in the log, then new complete lines as they are appended; ends when the job is
    terminal and the file is read to its end (a last unterminated line included)."""
    offset, pending = 0, b""
    while True:
        # The state before the read: if it is terminal, this read sees everything the job wrote.
        state = await run_in_threadpool(_job_state, db, job_id)
        while chunk := await run_in_threadpool(storage.read_from, path, offset):
            offset += len(chunk)
            pending += chunk
            complete, _, pending = pending.rpartition(b"\n")
            if complete:
                yield complete + b"\n"
        if state is None or state in TERMINAL:
            if pending:
                yield pending
            return
        if request is not None and await request.is_disconnected():
            return
        await asyncio.sleep(POLL_S)


@router.get(
    "",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/plain": {}}, "description": "the log text"},
        404: {"model": ErrorRead},
        429: {"model": ErrorRead, "description": "follow: the tenant holds too many open streams; see Retry-After"},
    },
)
async def read_logs(
    job: JobDep,
    db: DatabaseDep,
    storage: StorageDep,
    request: Request,
    follow: Annotated[bool, Query(description="keep streaming new lines until the job ends")] = False,
) -> StreamingResponse:
    """The job's log (empty before its first attempt wrote anything)."""
    path = storage.log_path(job.id)
    if follow:
        slots: StreamSlots = request.app.state.streams
        slots.check(job.tenant)  # 429 when the tenant holds too many; the stream holds a slot while it runs
        body: AsyncIterator[Any] | Iterator[bytes] = slots.guard(
            job.tenant, follow_log(db, storage, job.id, path, request)
        )
    elif path.is_file():
        body = storage.iter_bytes(path)
    else:
        body = iter(())
    return StreamingResponse(body, media_type="text/plain; charset=utf-8", headers={"X-Accel-Buffering": "no"})
