"""Read queries for the API and the CLI: tenant-scoped, paginated, never writing."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.db.models import Checkpoint, Job, JobEvent, Metric, Token, Trial

__all__ = [
    "Page",
    "events_after",
    "find_token",
    "get_checkpoint",
    "get_job",
    "jobs_by_state",
    "list_checkpoints",
    "list_jobs",
    "list_metrics",
    "list_trials",
]


class Page:
    """One page of jobs, newest first, and the opaque cursor of the next page (None at the end)."""

    def __init__(self, items: list[Job], next_cursor: str | None) -> None:
        self.items, self.next_cursor = items, next_cursor


def get_job(session: Session, job_id: str, tenant: str) -> Job | None:
    """The tenant's job, or None (another tenant's job is None too: the API answers 404)."""
    raise NotImplementedError


def list_jobs(
    session: Session,
    tenant: str,
    *,
    limit: int,
    cursor: str | None = None,
    states: list[str] | None = None,
    name: str | None = None,
) -> Page:
    """Newest first by (created_at, id); the cursor encodes the last item's (created_at, id), so pages
    stay stable while new jobs are inserted. Raises ValueError for a malformed cursor."""
    raise NotImplementedError


def events_after(session: Session, job_id: str, after_id: int = 0, limit: int = 500) -> list[JobEvent]:
    """The job's events with ``id > after_id``, oldest first."""
    raise NotImplementedError


def list_metrics(session: Session, job_id: str, trial_key: str | None = None) -> list[Metric]:
    """Every reported epoch, ordered by trial, phase (pretrain first), epoch."""
    raise NotImplementedError


def list_trials(session: Session, job_id: str) -> list[Trial]:
    raise NotImplementedError


def list_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    raise NotImplementedError


def get_checkpoint(session: Session, job_id: str, checkpoint_id: int) -> Checkpoint | None:
    raise NotImplementedError


def find_token(session: Session, token_hash: str) -> Token | None:
    """The token row for this hash (revoked and expired ones included; the caller decides)."""
    raise NotImplementedError


def jobs_by_state(session: Session) -> dict[str, int]:
    """Job counts per state, all tenants (for Prometheus)."""
    raise NotImplementedError
