"""``/v1/jobs/{id}/study``: a study's table so far (variants x seeds, intervals, paired tests)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from service.api.deps import JobDep, ReadSessionDep
from service.db.study import study_report
from service.schemas.errors import ErrorRead
from service.schemas.study import StudyRead

router = APIRouter(prefix="/jobs/{job_id}/study", tags=["study"])


@router.get("", responses={404: {"model": ErrorRead, "description": "no such job, or it is not a study"}})
def show_study(job: JobDep, session: ReadSessionDep) -> StudyRead:
    """Per variant the mean and 95% t interval of each figure over the seeds finished so far, and against
    the baseline the paired differences with a paired t-test and a sign test; every trial's state."""
    if job.kind != "study":
        raise HTTPException(404, f"job {job.id} is a {job.kind} job, not a study")
    return StudyRead.model_validate(study_report(session, job))
