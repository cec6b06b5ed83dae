"""Every route of the API: one include per resource under ``/v1``, plus the probes at the root."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.routes import checkpoints, estimators, events, health, jobs, logs, metrics, summary, trials

__all__ = ["router"]

v1 = APIRouter(prefix="/v1")
v1.include_router(jobs.router)
v1.include_router(metrics.router)
v1.include_router(events.router)
v1.include_router(logs.router)
v1.include_router(trials.router)
v1.include_router(checkpoints.router)
v1.include_router(summary.router)
v1.include_router(estimators.router)

router = APIRouter()
router.include_router(v1)
router.include_router(health.router)
