"""Every route of the API: one include per resource under ``/v1``, plus the probes and the dashboard at
the root."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.routes import (
    checkpoints,
    compare,
    estimators,
    events,
    health,
    jobs,
    logs,
    metrics,
    study,
    summary,
    trials,
    ui,
)
from service.schemas.errors import ErrorRead

__all__ = ["router"]

# Every /v1 route needs a token, so every one of them can answer 401: documented once, here.
v1 = APIRouter(prefix="/v1", responses={401: {"model": ErrorRead, "description": "missing, invalid or expired token"}})
v1.include_router(jobs.router)
v1.include_router(metrics.router)
v1.include_router(events.router)
v1.include_router(logs.router)
v1.include_router(trials.router)
v1.include_router(study.router)
v1.include_router(checkpoints.router)
v1.include_router(summary.router)
v1.include_router(estimators.router)
v1.include_router(compare.router)

router = APIRouter()
router.include_router(v1)
router.include_router(health.router)
router.include_router(ui.router)  # the dashboard at /ui, and / redirects there
