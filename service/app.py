"""``create_app(settings)``: the FastAPI application. Its lifespan owns the database handle (unless
one is given) and never starts Ray: the dispatcher does that."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import anyio
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.api import docs, errors
from service.api.edge import SecurityHeadersMiddleware
from service.api.monitoring import HttpMetricsMiddleware, Telemetry
from service.api.router import router
from service.api.streams import StreamSlots
from service.db.engine import Database
from service.settings import Settings, get_settings
from service.storage import Storage

__all__ = ["create_app"]


def _version() -> str:
    try:
        return version("fsg")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    """The API for ``settings`` (default: the environment's).

    Args:
        settings: where the database, the artifacts and Ray are.
        db: an open database to use as is (tests, an embedding process); the app then neither migrates
            nor disposes it. Without one, the lifespan opens ``settings.resolved_database_url``, brings
            its schema to the latest migration and disposes it at shutdown.
    """
    settings = settings or get_settings()
    storage = Storage(settings.resolved_artifacts_dir)
    telemetry = Telemetry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage.ensure()
        if db is not None:
            yield
            return
        from service.db import migrate  # Alembic is only needed by whoever owns the database

        url = settings.resolved_database_url
        await run_in_threadpool(migrate.upgrade, url)
        app.state.db = Database.from_url(url)
        try:
            yield
        finally:
            app.state.db.dispose()
            app.state.db = None

    app = FastAPI(
        title="fsg",
        version=_version(),
        summary="Train binary neural networks: submit jobs, watch them, download packed models.",
        lifespan=lifespan,
        # FastAPI's body limit sits outside every route: a body over it is 413 as soon as the declared
        # length or the bytes streamed in pass it, before the token is checked (a route reads its body
        # before solving its dependencies).
        max_body_size=settings.max_body_bytes,
        docs_url=None,  # service.api.docs serves them from installed files, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.token_cache = {}
    app.state.streams = StreamSlots(settings.max_streams_per_tenant)
    # Database work of the hot paths runs on a few threads of its own (see routes/jobs.py).
    app.state.db_limiter = anyio.CapacityLimiter(4)
    app.state.storage = storage
    app.state.telemetry = telemetry
    app.state.db = db
    errors.install(app)
    app.add_middleware(HttpMetricsMiddleware, telemetry=telemetry)
    app.add_middleware(SecurityHeadersMiddleware)  # added last: outermost of ours, on every response
    app.include_router(router)
    docs.install(app)
    return app
