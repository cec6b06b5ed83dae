"""``/v1/jobs/{id}/checkpoints``: the job's checkpoints, and downloads of their files.

``format=packed`` is the 1-bit deployment file, ``format=full`` the resumable training state,
``format=onnx`` the packed model exported to ONNX (``fsg_core.export``): made on the first request and
kept beside the packed file (written atomically: a failed export leaves nothing). Files are served only
from the artifact store (``Storage.servable``), whatever path a row holds.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from fsg_core.export import MissingExportExtra, to_onnx
from fsg_core.packed import PackedFormatError
from service.api.deps import JobDep, ReadSessionDep, StorageDep
from service.api.errors import invalid
from service.db import reads
from service.db.models import Checkpoint, Job
from service.schemas.checkpoints import CheckpointRead
from service.schemas.errors import ErrorRead, ValidationErrorRead
from service.storage import ArtifactNotFound

router = APIRouter(prefix="/jobs/{job_id}/checkpoints", tags=["checkpoints"])
log = logging.getLogger(__name__)

Format = Literal["packed", "full", "onnx"]
_EXTENSIONS = {"packed": ".packed.safetensors", "onnx": ".onnx"}


def find_checkpoint(session: Session, job: Job, ckpt: str, format: Format) -> Checkpoint:
    """Checkpoint ``ckpt`` of ``job`` (an id, or ``latest``: the newest one that has a ``format`` file).

    Raises:
        RequestValidationError: ``ckpt`` is neither an id nor ``latest``.
        ArtifactNotFound: no such checkpoint.
    """
    if ckpt == "latest":
        rows = [c for c in reads.list_checkpoints(session, job.id) if _path(c, format)]
        if not rows:
            raise ArtifactNotFound(f"job {job.id} has no {format} checkpoint yet")
        return max(rows, key=lambda c: (c.created_at, c.id))
    # ASCII digits only: str.isdigit() also accepts '²' (int() refuses it) and '２' (int() reads 2).
    if not (ckpt.isascii() and ckpt.isdigit()) or len(ckpt) > 18:
        raise invalid(("path", "ckpt"), "must be a checkpoint id (an integer) or 'latest'")
    row = reads.get_checkpoint(session, job.id, int(ckpt))
    if row is None:
        raise ArtifactNotFound(f"checkpoint {ckpt} of job {job.id} not found")
    return row


def _path(row: Checkpoint, format: Format) -> str | None:
    """The stored file a format is served from (ONNX is made from the packed file)."""
    return row.full_path if format == "full" else row.packed_path


def onnx_path(packed: Path) -> Path:
    """Where the ONNX export of ``packed`` is kept: beside it, ``<name>.onnx``."""
    name = packed.name.removesuffix(".safetensors").removesuffix(".packed")
    return packed.with_name(f"{name if name != packed.name else packed.stem}.onnx")


def exported_onnx(packed: Path, what: str) -> Path:
    """The ONNX file of ``packed``, exported now if it is missing or older than ``packed``.

    Two first requests at once both export and both rename the same bytes into place: harmless.

    Raises:
        HTTPException: 501 when the ``export`` extra is not installed on the API; 500 when the stored
            packed file cannot be read (logged: an artifact store fault, not the caller's).
    """
    target = onnx_path(packed)
    if target.is_file() and target.stat().st_mtime_ns >= packed.stat().st_mtime_ns:
        return target
    try:
        to_onnx(packed, target)
    except MissingExportExtra as exc:
        raise HTTPException(501, str(exc)) from None
    except PackedFormatError as exc:
        log.error("%s: unreadable packed file: %s", what, exc)
        raise HTTPException(500, f"the {what} is not readable, so it cannot be exported") from None
    return target


def download_name(job: Job, row: Checkpoint, format: Format, path: Path) -> str:
    """``<job name>-<job id 8>[-<trial>]-<phase>-e<epoch>.<format><ext>``, safe characters only."""
    safe = re.compile(r"[^A-Za-z0-9_.-]+")
    trial = f"-{safe.sub('_', row.trial_key)}" if row.trial_key else ""
    ext = _EXTENSIONS.get(format) or f".full{path.suffix or '.bin'}"
    return f"{safe.sub('_', job.name)}-{job.id[:8]}{trial}-{row.phase}-e{row.epoch}{ext}"


@router.get("", responses={404: {"model": ErrorRead}})
def list_checkpoints(job: JobDep, session: ReadSessionDep) -> list[CheckpointRead]:
    """Every checkpoint with its epoch, metrics, sizes and download links."""
    return [CheckpointRead.from_row(c, job.id) for c in reads.list_checkpoints(session, job.id)]


@router.get(
    "/{ckpt}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the file"},
        404: {"model": ErrorRead, "description": "no such checkpoint, or its file is gone"},
        422: {"model": ValidationErrorRead},
        501: {"model": ErrorRead, "description": "format=onnx on an API without the 'export' extra"},
    },
)
def download_checkpoint(
    job: JobDep,
    session: ReadSessionDep,
    storage: StorageDep,
    ckpt: str,
    format: Annotated[
        Format,
        Query(description="packed: the 1-bit model; full: the training state; onnx: the packed model as ONNX"),
    ] = "packed",
) -> FileResponse:
    """Stream checkpoint ``ckpt`` (an id or ``latest``) as ``format``."""
    row = find_checkpoint(session, job, ckpt, format)
    source = "full" if format == "full" else "packed"
    what = f"{source} file of checkpoint {row.id}"
    path = storage.servable(_path(row, format), what)
    if format == "onnx":
        path = storage.servable(exported_onnx(path, what), f"ONNX file of checkpoint {row.id}")
    return FileResponse(path, media_type="application/octet-stream", filename=download_name(job, row, format, path))
