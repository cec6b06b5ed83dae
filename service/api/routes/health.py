"""``/healthz`` (liveness), ``/readyz`` (database, and Ray when one is configured or recorded) and
``/metrics`` (Prometheus). Not under ``/v1`` and without a token: probes and scrapers call them."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from service.api.deps import DatabaseDep, ReadSessionDep, SettingsDep, StorageDep
from service.api.monitoring import dispatcher_window
from service.db import reads
from service.db.engine import Database
from service.db.models import utcnow
from service.schemas.health import LiveRead, ReadyRead
from service.settings import Settings
from service.storage import Storage

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 1.0
RayStatus = Literal["ok", "unreachable", "not configured"]


def _database_ok(db: Database) -> bool:
    try:
        with db.read() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not ready"; the reason goes to the log only
        log.warning("readiness: database unreachable: %s", exc)
        return False
    return True


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` out of ``ray://host:port``, ``host:port`` or ``http://host:port`` (else None)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.hostname and port:
        return parts.hostname, port
    if parts.hostname and parts.scheme in ("http", "https"):
        return parts.hostname, 443 if parts.scheme == "https" else 80
    return None


def ray_targets(settings: Settings, storage: Storage) -> list[tuple[str, int]]:
    """What to probe: ``RAY_ADDRESS`` (GCS or client port), else the local Ray the dispatcher recorded.
    ``auto``-style addresses are probed through the dashboard. Empty: Ray is not configured."""
    record = storage.read_ray_record()
    if settings.ray_address:
        address, dashboard = settings.ray_address, settings.ray_dashboard_url
    elif record is not None:
        address, dashboard = str(record.get("address") or ""), record.get("dashboard_url")
    else:
        return []
    target = _host_port(address) or _host_port(
        str(dashboard or storage.dashboard_url(settings.ray_dashboard_url, settings.ray_dashboard_port))
    )
    return [target] if target else []


async def _reachable(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


async def ray_status(settings: Settings, storage: Storage) -> RayStatus:
    targets = ray_targets(settings, storage)
    if not targets:
        return "not configured"
    return "ok" if all([await _reachable(h, p) for h, p in targets]) else "unreachable"


@router.get("/healthz")
def liveness(request: Request, response: Response) -> LiveRead:
    """The process answers (with ``X-FSG-Instance`` when it was started with one: ``fsg up`` checks that
    the API answering is the one it started, not one left behind)."""
    instance = request.app.state.settings.instance_id
    if instance:
        response.headers["X-FSG-Instance"] = instance
    return LiveRead()


@router.get("/readyz", responses={503: {"model": ReadyRead, "description": "the database is unreachable"}})
async def readiness(db: DatabaseDep, settings: SettingsDep, storage: StorageDep) -> JSONResponse:
    """Ready when the database answers; Ray is reported but optional (jobs wait queued without it)."""
    database_ok = await run_in_threadpool(_database_ok, db)
    body = ReadyRead(database="ok" if database_ok else "unreachable", ray=await ray_status(settings, storage))
    return JSONResponse(body.model_dump(), status_code=200 if database_ok else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus(request: Request, session: ReadSessionDep, settings: SettingsDep) -> Response:
    """Prometheus text: ``fsg_jobs{state}``, ``fsg_queue_depth``, ``fsg_queue_oldest_age_seconds``,
    ``fsg_dispatcher_heartbeat_age_seconds{dispatcher}``, ``fsg_dispatchers_alive``, HTTP request counts
    and latencies."""
    now = utcnow()
    recent = reads.list_dispatchers(session, since=now - dispatcher_window(settings.heartbeat_s), limit=1000)
    body = request.app.state.telemetry.render(
        reads.jobs_by_state(session),
        oldest_queued_at=reads.oldest_queued_at(session),
        heartbeats=[(row.owner, row.heartbeat_at) for row in recent],
        heartbeat_s=settings.heartbeat_s,
        now=now,
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)
