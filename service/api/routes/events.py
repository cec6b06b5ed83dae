"""``/v1/jobs/{id}/events``: the job's events as server-sent events, resumable by event id.

Each ``JobEvent`` goes out as ``id: <event id>``, ``event: <kind>``, ``data: <EventRead JSON>``. The
stream polls the database (a short read session per poll), sends a comment line as heartbeat while
idle, and ends once the job is terminal and every event has been sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import DatabaseDep, JobDep
from service.api.errors import InvalidParameter
from service.api.streams import StreamSlots
from service.db import reads
from service.db.engine import Database
from service.db.models import Job
from service.db.states import TERMINAL
from service.schemas.errors import ErrorRead
from service.schemas.events import EventRead

router = APIRouter(prefix="/jobs/{job_id}/events", tags=["events"])

POLL_S = 0.5  # how often a live stream looks for new events
HEARTBEAT_S = 15.0  # an idle stream sends a comment this often, so proxies keep it open
BATCH = 500  # events read per poll; a full batch is followed by another read at once
MAX_EVENT_ID = 2**63 - 1  # BIGINT

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def format_event(event: EventRead) -> str:
    """One SSE message (the JSON has no newlines, so one ``data:`` line suffices)."""
    return f"id: {event.id}\nevent: {event.kind}\ndata: {event.model_dump_json()}\n\n"


def _poll(db: Database, job_id: str, after_id: int) -> tuple[str | None, list[EventRead]]:
    # State first, then events: once the state read is terminal, the events read next include the
    # terminal transition (written in the same transaction as the state).
    with db.read() as session:
        job = session.get(Job, job_id)
        state = job.state if job is not None else None
        events = [EventRead.model_validate(e) for e in reads.events_after(session, job_id, after_id, BATCH)]
    return state, events


def _start_id(last_event_id: str | None, after: int) -> int:
    if last_event_id is None or not last_event_id.strip():
        return after
    try:
        value = int(last_event_id)
    except ValueError:
        raise InvalidParameter("Last-Event-ID", "must be an event id (an integer)") from None
    if not 0 <= value <= MAX_EVENT_ID:
        raise InvalidParameter("Last-Event-ID", f"must lie in [0, {MAX_EVENT_ID}]")
    return max(value, after)


async def event_stream(
    db: Database, job_id: str, after_id: int, *, follow: bool, request: Request | None = None
) -> AsyncIterator[str]:
    """The job's events after ``after_id``; with ``follow``, new ones as they come until the job ends."""
    cursor = after_id
    last_sent = time.monotonic()
    while True:
        state, events = await run_in_threadpool(_poll, db, job_id, cursor)
        for event in events:
            yield format_event(event)
            cursor = event.id
        now = time.monotonic()
        if events:
            last_sent = now
        if len(events) >= BATCH:
            continue
        if not follow or state is None or state in TERMINAL:
            return
        if request is not None and await request.is_disconnected():
            return
        if now - last_sent >= HEARTBEAT_S:
            yield ": heartbeat\n\n"
            last_sent = now
        await asyncio.sleep(POLL_S)


@router.get(
    "",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
        400: {"model": ErrorRead, "description": "Last-Event-ID is not an event id"},
        404: {"model": ErrorRead},
        429: {"model": ErrorRead, "description": "follow: the tenant holds too many open streams; see Retry-After"},
    },
)
async def stream_events(
    job: JobDep,
    db: DatabaseDep,
    request: Request,
    after: Annotated[
        int, Query(ge=0, le=MAX_EVENT_ID, description="start after this event id (like Last-Event-ID)")
    ] = 0,
    follow: Annotated[bool, Query(description="false: send what exists and end")] = True,
    last_event_id: Annotated[str | None, Header(max_length=32, description="resume after this event id")] = None,
) -> StreamingResponse:
    """State changes, metrics, checkpoints and trials as server-sent events, in order."""
    start = _start_id(last_event_id, after)
    body: AsyncIterator[Any] = event_stream(db, job.id, start, follow=follow, request=request)
    if follow:
        slots: StreamSlots = request.app.state.streams
        slots.check(job.tenant)  # 429 when the tenant holds too many; the stream holds a slot while it runs
        body = slots.guard(job.tenant, body)
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
