"""``/v1/jobs/{id}/metrics``: every reported epoch (and trial), as JSON rows or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from service.api.deps import JobDep, ReadSessionDep
from service.db import reads
from service.schemas.errors import ErrorRead
from service.schemas.metrics import MetricRead, metric_row

router = APIRouter(prefix="/jobs/{job_id}/metrics", tags=["metrics"])

_FIXED_COLUMNS = ["phase", "epoch", "trial", "attempt"]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One line per row; the columns are the fixed ones, then every metric key in first-seen order."""
    columns = list(_FIXED_COLUMNS)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()})
    return out.getvalue()


@router.get(
    "",
    response_model=list[MetricRead],
    responses={
        200: {"content": {"text/csv": {}}, "description": "rows as JSON, or CSV with ?format=csv"},
        404: {"model": ErrorRead},
    },
)
def list_metrics(
    job: JobDep,
    session: ReadSessionDep,
    format: Annotated[Literal["json", "csv"], Query(description="csv: one line per epoch")] = "json",
    trial: Annotated[
        str | None, Query(max_length=128, pattern=r"^[^\x00-\x1f]*$", description="only this search trial")
    ] = None,
) -> Any:
    """Every epoch the job reported: ``{"phase", "epoch", "trial", "attempt", **metrics}`` per row."""
    rows = [metric_row(m) for m in reads.list_metrics(session, job.id, trial_key=trial)]
    if format == "csv":
        return Response(
            to_csv(rows),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{job.id}-metrics.csv"'},
        )
    return rows
