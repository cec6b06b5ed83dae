"""What the workers write back while a job runs: per-epoch metrics, checkpoints, trials, summaries.

Each write also appends a ``JobEvent`` (kind ``metric``, ``checkpoint`` or ``trial``) so that the SSE
stream carries it, in order, with the event id as its cursor. State changes are not written here:
only ``queue.py`` changes states.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service.db.models import Checkpoint, Job, Trial

__all__ = ["mark_best_trial", "record_checkpoint", "record_metrics", "set_summary", "upsert_trial"]


def record_metrics(
    session: Session, job_id: str, rows: list[dict[str, Any]], *, attempt: int, trial_key: str = ""
) -> None:
    """Upsert one ``Metric`` per row (keyed by job, trial, phase, epoch; a resumed attempt's re-reported
    epoch replaces the earlier one) and append one ``metric`` event per row. Each row holds at least
    ``phase`` and ``epoch``; everything else is stored as the values."""
    raise NotImplementedError


def record_checkpoint(
    session: Session,
    job_id: str,
    *,
    epoch: int,
    phase: str,
    full_path: str | None,
    packed_path: str | None,
    full_bytes: int | None,
    packed_bytes: int | None,
    metrics: dict[str, Any] | None,
    trial_key: str = "",
) -> Checkpoint:
    """Insert a checkpoint row and a ``checkpoint`` event."""
    raise NotImplementedError


def upsert_trial(
    session: Session,
    job_id: str,
    *,
    trial_key: str,
    config: dict[str, Any],
    state: str,
    metric: float | None = None,
    epochs: int = 0,
    error: str | None = None,
) -> Trial:
    """Insert or update a search trial (state ``running``/``succeeded``/``failed``/``stopped``) and append
    a ``trial`` event."""
    raise NotImplementedError


def mark_best_trial(session: Session, job_id: str, trial_key: str) -> None:
    """Flag ``trial_key`` as the job's best trial (and no other)."""
    raise NotImplementedError


def set_summary(session: Session, job: Job, summary: dict[str, Any]) -> None:
    """Store the job's summary metrics (best / last-10 figures, packed size, best trial...)."""
    raise NotImplementedError
