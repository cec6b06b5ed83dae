"""``/v1/jobs``: submit (with dry run and idempotency), list, show, cancel."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, Response, status
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.api.deps import (
    DatabaseDep,
    JobDep,
    JobForUpdateDep,
    LimitDep,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    TenantDep,
)
from service.api.errors import AlreadyFinished, InvalidParameter, invalid
from service.db import queue, reads, scheduling, tenants
from service.db.models import Job, utcnow
from service.db.scheduling import Quota
from service.db.states import JobState
from service.schemas.errors import ErrorRead, ValidationErrorRead
from service.schemas.jobs import NAME_PATTERN, DryRunRead, JobPage, JobRead, JobSpec, set_path
from service.settings import Settings
from service.storage import Storage, confine

router = APIRouter(prefix="/jobs", tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorRead, "description": "missing, invalid or expired token"},
    422: {"model": ValidationErrorRead, "description": "invalid input; `loc` names the field"},
}
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, 404: {"model": ErrorRead, "description": "no such job"}}


def job_read(job: Job, dashboard_url: str) -> JobRead:
    """The response for ``job``; the Ray dashboard link appears once the job has reached Ray."""
    fields = {field: getattr(job, field) for field in JobRead.model_fields if field != "ray_dashboard_url"}
    # The latest attempt's own page (its Ray task); the dashboard's job list for attempts launched before
    # the page was recorded.
    page = job.ray_run_url or (f"{dashboard_url}/#/jobs" if job.attempts else None)
    return JobRead.model_validate({**fields, "ray_dashboard_url": page})


def _dashboard(settings: Settings, storage: Storage) -> str:
    return storage.dashboard_url(settings.ray_dashboard_url, settings.ray_dashboard_port)


def _confined_checkpoint(path: str, session: Session, tenant: str, settings: Settings, storage: Storage) -> Path:
    """``init.checkpoint`` may come from a data root or from one of the tenant's own jobs' artifacts."""
    try:
        return confine(path, settings.resolved_data_roots)
    except ValueError as outside_data:
        owner = storage.owner_job_id(path)
        if owner is not None and reads.get_job(session, owner, tenant) is not None:
            return confine(path, storage.roots)
        raise ValueError(f"{outside_data}; a checkpoint of one of your own jobs is accepted too") from None


def _get_path(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)  # type: ignore[assignment]
    return data


def resolve_paths(spec: JobSpec, session: Session, tenant: str, settings: Settings, storage: Storage) -> JobSpec:
    """The spec with its file paths confined and resolved (symlinks followed, relative to the first data root).

    Paths sampled by a search (``search.space`` choices that set ``data.root`` or ``init.checkpoint``)
    are checked the same way.

    Raises:
        RequestValidationError: a path lies outside the allowed directories (422 naming the field).
    """
    roots = settings.resolved_data_roots
    path_fields = {"data.root": False, "init.checkpoint": True}  # dotted path -> is a checkpoint

    def check(loc: tuple[str | int, ...], value: Any, is_checkpoint: bool) -> str | None:
        if value is None:
            return None
        try:
            if is_checkpoint:
                return str(_confined_checkpoint(str(value), session, tenant, settings, storage))
            return str(confine(str(value), roots))
        except ValueError as exc:
            raise invalid(("body", *loc), str(exc)) from None

    data_root = check(("data", "root"), spec.data.root, False)
    checkpoint = check(("init", "checkpoint"), spec.init.checkpoint, True)
    search = spec.search
    if search is not None:
        base = spec.train_spec().model_dump(mode="json")
        space = dict(search.space)
        for path, dim in search.space.items():
            values = getattr(dim, "values", None)
            if values is None:
                continue
            resolved_values = []
            for i, value in enumerate(values):
                loc = ("search", "space", path, "values", i)
                candidate = set_path(base, path, value)
                for field, is_checkpoint in path_fields.items():
                    head, _, leaf = field.partition(".")
                    resolved_leaf = check(loc, (candidate.get(head) or {}).get(leaf), is_checkpoint)
                    if path == field:
                        value = resolved_leaf
                    elif field.startswith(path + ".") and isinstance(value, dict):
                        # A value that sets a whole section ("init": {...}) carries the path inside it: it is
                        # stored resolved too, or a worker would open it relative to its own directory.
                        inner = field.removeprefix(path + ".")
                        if _get_path(value, inner) is not None:
                            value = set_path(value, inner, resolved_leaf)
                resolved_values.append(value)
            space[path] = dim.model_copy(update={"values": resolved_values})
        search = search.model_copy(update={"space": space})
    resolved = spec.model_copy(
        update={
            "data": spec.data.model_copy(update={"root": data_root}),
            "init": spec.init.model_copy(update={"checkpoint": checkpoint}),
            "search": search,
        }
    )
    # What is stored must validate again wherever it is read (the dispatcher, a Ray worker): a path can
    # pass as written and fail once resolved (a relative root grows by the data root's prefix).
    try:
        return JobSpec.model_validate(resolved.model_dump(mode="json"))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise invalid(("body", *first["loc"]), f"once resolved: {first['msg']}") from None


def admit(spec: JobSpec, session: Session, tenant: str, settings: Settings) -> Quota:
    """Refuse (422) a job that can never run: bigger than every live dispatcher's Ray cluster, or than
    the tenant's quota, or above its priority ceiling. Returns the tenant's quota.

    With no live dispatcher that published its cluster, the size is not judged here: the dispatchers
    refuse such a job once they know (``queue.fail_unfittable``).
    """
    since = utcnow() - timedelta(seconds=3 * settings.heartbeat_s)
    reason = queue.unfittable(spec.cpus, spec.gpus, reads.live_clusters(session, since=since))
    if reason is not None:
        raise invalid(("body", "resources"), reason.removeprefix("resources: "))
    quota = tenants.get(session, tenant, tenants.default_quota(settings))
    if quota.max_priority is not None and spec.priority > quota.max_priority:
        raise invalid(
            ("body", "priority"), f"priority {spec.priority} is above this tenant's ceiling {quota.max_priority}"
        )
    over = scheduling.over_quota(scheduling.Usage(), quota, spec.cpus, spec.gpus)
    if over is not None:
        raise invalid(
            ("body", "resources"),
            f"the job needs {spec.cpus:g} CPUs and {spec.gpus:g} GPUs; this tenant's quota allows {over}",
        )
    return quota


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobRead | DryRunRead,
    responses={
        200: {
            "model": DryRunRead | JobRead,
            "description": "a dry run's resolved spec, or the first job again on an idempotent replay "
            "(header Idempotent-Replayed)",
        },
        409: {"model": ErrorRead, "description": "Idempotency-Key reused with a different body"},
        429: {"model": ErrorRead, "description": "the tenant's queue quota (max_queued) is full; see Retry-After"},
        **_ERRORS,
    },
)
async def submit_job(
    request: Request,
    spec: JobSpec,
    response: Response,
    db: DatabaseDep,
    tenant: TenantDep,
    settings: SettingsDep,
    storage: StorageDep,
    dry_run: Annotated[bool, Query(description="validate and resolve only; nothing is queued")] = False,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=256, description="a replay with the same key returns the first job"),
    ] = None,
) -> Response | DryRunRead:
    """Validate a spec and queue it (201), or only validate it with ``?dry_run=true`` (200)."""

    def write() -> tuple[JobSpec, Job | None, bool]:
        # One transaction opened and closed on one thread (SQLite writers queue on an in-process lock).
        with db.write() as session:
            resolved = resolve_paths(spec, session, tenant, settings, storage)
            quota = admit(resolved, session, tenant, settings)
            if dry_run:
                return resolved, None, False
            job, created = queue.enqueue(
                session, tenant=tenant, spec=resolved, idempotency_key=idempotency_key, max_queued=quota.max_queued
            )
            session.flush()
            return resolved, job, created

    # Parsing, validation and serialisation run on the event loop; only the database work goes to a
    # small thread pool of its own, so a burst of submissions does not fight for the GIL in 40 threads.
    resolved, job, created = await anyio.to_thread.run_sync(write, limiter=request.app.state.db_limiter)
    if job is None:
        response.status_code = status.HTTP_200_OK
        return DryRunRead(spec=resolved.model_dump(mode="json"), cpus=resolved.cpus, gpus=resolved.gpus)
    # Serialised here, once: FastAPI would validate the model again against the response type.
    body = job_read(job, _dashboard(settings, storage)).model_dump_json()
    if created:
        return Response(body, status.HTTP_201_CREATED, {"Location": f"/v1/jobs/{job.id}"}, "application/json")
    return Response(body, status.HTTP_200_OK, {"Idempotent-Replayed": "true"}, "application/json")


@router.get("", responses={**_ERRORS, 400: {"model": ErrorRead, "description": "a malformed or foreign cursor"}})
def list_jobs(
    session: ReadSessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    storage: StorageDep,
    limit: LimitDep,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None,
    state: Annotated[
        list[JobState] | None, Query(alias="status", description="only jobs in these states (repeatable)")
    ] = None,
    name: Annotated[
        str | None, Query(max_length=128, pattern=NAME_PATTERN, description="only jobs with this name")
    ] = None,
) -> JobPage:
    """The tenant's jobs, newest first; pages stay stable while new jobs arrive."""
    try:
        page = reads.list_jobs(
            session, tenant, limit=limit, cursor=cursor, states=[s.value for s in state] if state else None, name=name
        )
    except ValueError as exc:
        raise InvalidParameter("cursor", str(exc) or "malformed") from None
    dashboard = _dashboard(settings, storage)
    return JobPage(items=[job_read(job, dashboard) for job in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", responses=_JOB_ERRORS)
def show_job(job: JobDep, settings: SettingsDep, storage: StorageDep) -> JobRead:
    """One job: state, attempts, timestamps, resolved spec, summary, error and Ray dashboard link."""
    return job_read(job, _dashboard(settings, storage))


@router.post(
    "/{job_id}/cancel",
    responses={**_JOB_ERRORS, 409: {"model": ErrorRead, "description": "the job already succeeded or failed"}},
)
def cancel_job(job: JobForUpdateDep, session: SessionDep, settings: SettingsDep, storage: StorageDep) -> JobRead:
    """Queued: ``cancelled`` at once. Running: ``cancelling`` until Ray has stopped, then ``cancelled``.
    Already cancelled or cancelling: unchanged (200). Succeeded or failed: 409."""
    if job.state in (JobState.succeeded, JobState.failed):
        raise AlreadyFinished(job.id, job.state)
    job = queue.request_cancel(session, job)
    session.flush()
    return job_read(job, _dashboard(settings, storage))
