"""What ``GET /v1/compare`` reads of a few jobs: each job's curve (its stored per-epoch metrics, in
order) and the figures ``fsg train`` reports, computed from that curve. Reads only, tenant-scoped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, false, or_, select
from sqlalchemy.orm import Session

from fsg_core.train import summarize_history
from service.db.models import Checkpoint, Job, Metric, Trial

__all__ = ["JobComparison", "compare_jobs", "summarize_rows"]


@dataclass(frozen=True)
class JobComparison:
    """One job as the comparison shows it.

    Attributes:
        job: the row.
        trial_key: whose metrics ``rows`` are: ``""`` for a training job, the best trial for a search,
            None for a search without a best trial yet (``rows`` is then empty).
        rows: ``{"phase", "epoch", **values}`` per reported epoch, pre-training first, then binarized.
        figures: ``summarize_rows(rows)``: best / last-k figures of the binarized phase, NaN as None.
        packed_bytes: the size of the latest packed model of ``trial_key``; None before one is written.
    """

    job: Job
    trial_key: str | None
    rows: list[dict[str, Any]]
    figures: dict[str, Any]
    packed_bytes: int | None


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``fsg_core.train.summarize_history`` of stored rows: the numbers ``fsg train`` reports.

    Stored values went through ``records.json_safe`` (NaN and inf became None); they are NaN again
    here, so the summary skips them exactly as it skips the NaN of a live run, and a binarized row
    without ``train_loss`` counts as a NaN loss rather than failing. Non-finite figures come back None.
    """
    history = []
    for row in rows:
        restored = {k: math.nan if v is None else v for k, v in row.items()}
        if restored.get("phase") == "binary":
            restored.setdefault("train_loss", math.nan)
        history.append(restored)
    summary = summarize_history(history)
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}


def _best_trials(session: Session, search_ids: list[str]) -> dict[str, str]:
    if not search_ids:
        return {}
    query = select(Trial.job_id, Trial.trial_key).where(Trial.job_id.in_(search_ids), Trial.is_best.is_(True))
    return {job_id: trial_key for job_id, trial_key in session.execute(query)}


def _of(column_job: Any, column_trial: Any, keys: dict[str, str]) -> Any:
    """``(job_id, trial_key)`` is one of ``keys.items()``: an OR of at most a dozen pairs, each served by
    the job_id index."""
    pairs = [and_(column_job == job_id, column_trial == trial_key) for job_id, trial_key in keys.items()]
    return or_(*pairs) if pairs else false()


def compare_jobs(session: Session, tenant: str, job_ids: Sequence[str]) -> dict[str, JobComparison]:
    """The tenant's jobs among ``job_ids``, keyed by id, with their curves and figures.

    An id that is unknown or belongs to another tenant is absent from the result (the API answers 404
    naming it). A training job's curve is its own metrics; a search's is its best trial's (empty until
    the search has marked one). Four queries whatever the number of jobs.
    """
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return {}
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids), Job.tenant == tenant))}
    best = _best_trials(session, [job.id for job in jobs.values() if job.kind == "search"])
    # Whose metrics each job shows: its own (trial ""), or its best trial's; a search without one shows none.
    keys = {
        job_id: best[job_id] if job.kind == "search" else ""
        for job_id, job in jobs.items()
        if job.kind != "search" or job_id in best
    }

    pretrain_first = case((Metric.phase == "pretrain", 0), else_=1)
    metrics = session.scalars(
        select(Metric)
        .where(_of(Metric.job_id, Metric.trial_key, keys))
        .order_by(Metric.job_id, pretrain_first, Metric.phase, Metric.epoch)
    )
    rows: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in jobs}
    for metric in metrics:
        rows[metric.job_id].append({"phase": metric.phase, "epoch": metric.epoch, **(metric.values or {})})

    packed: dict[str, int | None] = {}
    checkpoints = session.execute(
        select(Checkpoint.job_id, Checkpoint.packed_bytes)
        .where(_of(Checkpoint.job_id, Checkpoint.trial_key, keys), Checkpoint.packed_bytes > 0)
        .order_by(Checkpoint.id)
    )
    for job_id, size in checkpoints:
        packed[job_id] = size  # the latest wins, as in the job's own summary (workers/train_driver.py)

    return {
        job_id: JobComparison(
            job=job,
            trial_key=keys.get(job_id),
            rows=rows[job_id],
            figures=summarize_rows(rows[job_id]),
            packed_bytes=packed.get(job_id),
        )
        for job_id, job in jobs.items()
    }
