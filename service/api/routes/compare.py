"""``/v1/compare``: a few of the caller's jobs side by side, their figures and per-epoch curves."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import ReadSessionDep, TenantDep, is_job_id
from service.api.errors import JobNotFound
from service.db.comparison import compare_jobs
from service.schemas.compare import ComparedJobRead, ComparisonRead
from service.schemas.errors import ErrorRead

router = APIRouter(prefix="/compare", tags=["compare"])

MAX_JOBS = 12  # what one page (and one legend) can still show


@router.get("", responses={404: {"model": ErrorRead, "description": "a job id that is not one of the caller's"}})
def compare(
    tenant: TenantDep,
    session: ReadSessionDep,
    job: Annotated[
        list[str],
        Query(min_length=1, max_length=MAX_JOBS, description=f"a job id, repeated for each job (1 to {MAX_JOBS})"),
    ],
) -> ComparisonRead:
    """The jobs in the order given: best / last-k figures of the binarized phase (as ``fsg train``
    reports them), packed size, and the stored per-epoch curves (a search: its best trial's)."""
    found = compare_jobs(session, tenant, [job_id for job_id in job if is_job_id(job_id)])
    missing = next((job_id for job_id in job if job_id not in found), None)
    if missing is not None:
        raise JobNotFound(missing)
    return ComparisonRead(jobs=[ComparedJobRead.from_comparison(found[job_id]) for job_id in job])
