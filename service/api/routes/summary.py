"""``/v1/jobs/{id}/summary``: the packed model of the job's latest packed checkpoint, described."""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException

from fsg_core.packed import PackedFormatError
from fsg_core.summary import describe_packed
from service.api.deps import JobDep, ReadSessionDep, StorageDep
from service.api.routes.checkpoints import find_checkpoint
from service.schemas.checkpoints import SummaryRead
from service.schemas.errors import ErrorRead

router = APIRouter(prefix="/jobs/{job_id}/summary", tags=["summary"])
log = logging.getLogger(__name__)


@lru_cache(maxsize=64)
def _describe(path: str, _mtime_ns: int, _size: int) -> dict[str, Any]:
    # Keyed by path, mtime and size: a rewritten file is described again, an unchanged one never is
    # (it costs a model build and a forward pass).
    return describe_packed(path)


def describe(path: Path) -> dict[str, Any]:
    stat = os.stat(path)
    return _describe(str(path), stat.st_mtime_ns, stat.st_size)


@router.get("", responses={404: {"model": ErrorRead, "description": "no packed checkpoint yet"}})
def show_summary(job: JobDep, session: ReadSessionDep, storage: StorageDep) -> SummaryRead:
    """1-bit vs full-precision parameters, bytes and MACs per layer, from the latest packed file."""
    row = find_checkpoint(session, job, "latest", "packed")
    path = storage.servable(row.packed_path, f"packed file of checkpoint {row.id}")
    try:
        described = describe(path)
    except PackedFormatError as exc:
        log.error("job %s checkpoint %s: unreadable packed file: %s", job.id, row.id, exc)
        raise HTTPException(500, f"the packed file of checkpoint {row.id} is not readable") from None
    return SummaryRead(checkpoint_id=row.id, epoch=row.epoch, phase=row.phase, **described)
