"""``/v1/jobs/{id}/trials``: a search's trials (empty for a training job)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import JobDep, ReadSessionDep
from service.db import reads
from service.schemas.errors import ErrorRead
from service.schemas.trials import TrialRead

router = APIRouter(prefix="/jobs/{job_id}/trials", tags=["trials"])


@router.get("", responses={404: {"model": ErrorRead}})
def list_trials(job: JobDep, session: ReadSessionDep) -> list[TrialRead]:
    """Each trial's sampled config, state and best metric."""
    return [TrialRead.model_validate(t) for t in reads.list_trials(session, job.id)]
